"""videomae: self-supervised video pretraining with masked autoencoders."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="videomae",
    version="0.1.0",
    description="Video masked autoencoders (VideoMAE, MAE-ST): tubelet ViTs, pluggable masking, "
    "DeepSpeed training on SLURM, fine-tuning and multi-view evaluation",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["videomae", "videomae.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=0.9",
        "einops",
        "numpy",
        # the `decord` backend: decord2, the maintained fork (same `import decord`), decodes 1.3x
        # faster than decord 0.6 in one loader process and has aarch64 and Python 3.12+ wheels;
        # elsewhere (macOS) the loader falls back to PyAV and says so
        "decord2>=3.4; platform_system == 'Linux'",
        "av>=10",
        "deepspeed>=0.12",
        "fvcore",
        "pyyaml",
        "tqdm",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest>=7", "transformers>=4.23.1", "scikit-video"],
        # optional decoder (DATA.BACKEND torchcodec): each release is built for one torch release
        # (0.17: torch 2.14) and needs FFmpeg's shared libraries, e.g. Debian's `ffmpeg` package
        "torchcodec": ["torchcodec==0.17.*"],
    },
)
