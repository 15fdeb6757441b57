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
