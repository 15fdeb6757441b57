"""One interface for masking strategies, and a registry so users add their own by name.

A strategy is called as `strategy(batch_size, grid=(T', H', W'), device=..., generator=...)` and
returns a `torch.bool` tensor (B, N) with N = T'*H'*W' in raster order (t, h, w), True = masked.
Every sample masks exactly the same number of tokens, so visible tokens gather with
`x[~mask].reshape(B, -1, D)`.

    @register_masking("checkerboard")
    class Checkerboard(MaskingStrategy):
        def make(self, batch_size, grid, device, generator): ...
"""
from __future__ import annotations

import math

import torch

MASKING_REGISTRY: dict[str, type["MaskingStrategy"]] = {}


def register_masking(name: str):
    def add(cls):
        if name in MASKING_REGISTRY and MASKING_REGISTRY[name] is not cls:
            raise ValueError(f"masking strategy {name!r} is already registered")
        MASKING_REGISTRY[name] = cls
        cls.name = name
        return cls
    return add


def build_masking(name: str, ratio: float = 0.9, **kwargs) -> "MaskingStrategy":
    if name not in MASKING_REGISTRY:
        raise ValueError(f"unknown masking strategy {name!r}; registered: {sorted(MASKING_REGISTRY)}")
    return MASKING_REGISTRY[name](ratio=ratio, **kwargs)


class MaskingStrategy:
    name = "base"

    def __init__(self, ratio: float = 0.9):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio

    def __call__(self, batch_size: int, grid, device=None, generator: torch.Generator | None = None):
        grid = tuple(int(g) for g in grid)
        if len(grid) != 3:
            raise ValueError(f"grid must be (T', H', W'), got {grid}")
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        mask = self.make(batch_size, grid, torch.device(device), generator)
        # shape and dtype only: checking equal counts here would sync the device on every step
        # (the tests check that invariant for every strategy, the model checks its input)
        assert mask.dtype == torch.bool and mask.shape == (batch_size, math.prod(grid))
        return mask

    def num_masked(self, grid) -> int:
        """Masked tokens per sample for this grid (how the ratio is rounded)."""
        raise NotImplementedError

    def make(self, batch_size: int, grid, device, generator) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio})"


def uniform(shape, device, generator) -> torch.Tensor:
    """Uniform noise drawn from `generator` (on the generator's device), moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def lowest_k(noise: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask with True at the k smallest values of each row: a uniform random k-subset."""
    mask = torch.zeros_like(noise, dtype=torch.bool)
    if k:
        mask.scatter_(1, noise.argsort(dim=1)[:, :k], True)
    return mask
