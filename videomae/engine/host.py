"""Tensors to the host, for pictures, reports and metrics.

The training step keeps everything on the accelerator; what leaves it does so here, in one place,
so nothing calls `.numpy()` on a tensor that may live on a GPU or hold bfloat16 (which NumPy lacks).
"""
from __future__ import annotations

import numpy as np
import torch


def to_numpy(x: torch.Tensor, dtype=None) -> np.ndarray:
    """Detached host copy. Floating tensors come back as float32 (bf16/fp16 have no exact NumPy
    twin on every platform); integer and bool tensors keep their dtype unless `dtype` says."""
    x = x.detach()
    if x.is_floating_point() and dtype is None:
        x = x.float()
    array = x.cpu().numpy()
    return array.astype(dtype, copy=False) if dtype is not None else array
