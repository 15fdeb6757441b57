"""One interface for masking strategies, and a registry so users add their own by name.

A mask is a `torch.bool` tensor (B, N), N = T'*H'*W' in raster order (t, h, w), True = masked, and
every row masks the same number of tokens (the model gathers visible tokens with index tensors).

Training draws masks per the seeding protocol (`videomae/seeding.py`): a rank asks only for its own
global rows, and every row's mask is a function of (SEED, step, row) alone:

    gen = RowGenerator.for_range(seed, step, first_row, batch, stream="mask", device=device)
    mask = strategy.draw_rows(gen, grid)          # (len(gen), N), row i for global row gen.rows[i]

A strategy implements one of two methods:

    @register_masking("checkerboard")
    class Checkerboard(MaskingStrategy):
        def draw(self, gen, grid):                     # preferred: vectorized over rows
            noise = gen.uniform(4)                      # (R, 4): only from the row generator
            ...
        def num_masked(self, grid): ...                 # masked per row, if fixed: no device read

`draw(gen, grid)` takes every random number from `gen` (each row's numbers depend only on that row).
The older `make(batch_size, grid, device, generator)` still works: a strategy that implements only
`make` is called once per row with a `torch.Generator` seeded from that row's key (a Python loop over
the rows -- implement `draw` when that cost matters). The older call `strategy(batch_size, grid,
device=..., generator=...)` works for every strategy; it is what tools and notebooks use to draw a few
masks from one generator.
"""
from __future__ import annotations

import math

import torch

from ..seeding import RowGenerator

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


def _check_grid(grid) -> tuple[int, int, int]:
    grid = tuple(int(g) for g in grid)
    if len(grid) != 3:
        raise ValueError(f"grid must be (T', H', W'), got {grid}")
    return grid


def validate_mask(mask, grid, name: str = "mask", expected: int | None = None) -> int:
    """Check a mask against the contract -- torch.bool, shape (B, T'*H'*W'), the same masked count
    in every row (`expected`, if given) -- and return that count. Reads the device: call it on the
    first step and on log steps, not on every step."""
    n = math.prod(_check_grid(grid))
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a torch.bool tensor (True = masked), got {kind}; "
                         "a 0/1 integer mask would index tokens instead of selecting them")
    if mask.ndim != 2 or mask.shape[1] != n:
        raise ValueError(f"{name} must have shape (B, N) with N = {n} for grid {grid}, "
                         f"got {tuple(mask.shape)}")
    counts = mask.sum(dim=1).tolist()
    if counts and (min(counts) != max(counts)):
        raise ValueError(f"every sample must mask the same number of tokens; {name} counts per "
                         f"sample are {counts}")
    count = counts[0] if counts else 0
    if expected is not None and counts and count != expected:
        raise ValueError(f"{name} masks {count} tokens per sample, but its strategy's num_masked "
                         f"says {expected}")
    return count


class MaskingStrategy:
    name = "base"

    def __init__(self, ratio: float = 0.9):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio

    # -- the two ways to be called -----------------------------------------------------------------
    def draw_rows(self, gen: RowGenerator, grid) -> torch.Tensor:
        """Masks for the global rows of `gen` (the training path, per the seeding protocol)."""
        grid = _check_grid(grid)
        mask = self.draw(gen, grid)
        # shape and dtype only: counting would read the device (validate_mask does, on log steps)
        if mask.dtype != torch.bool or tuple(mask.shape) != (len(gen), math.prod(grid)):
            raise ValueError(f"masking strategy {self.name!r} returned {mask.dtype} of shape "
                             f"{tuple(mask.shape)}; expected torch.bool ({len(gen)}, {math.prod(grid)})")
        return mask

    def __call__(self, batch_size: int, grid, device=None, generator: torch.Generator | None = None):
        """`batch_size` masks from one torch generator (tools, notebooks, tests)."""
        grid = _check_grid(grid)
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        mask = self.make(batch_size, grid, torch.device(device), generator)
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch_size, math.prod(grid)):
            raise ValueError(f"masking strategy {self.name!r} returned {mask.dtype} of shape "
                             f"{tuple(mask.shape)}; expected torch.bool ({batch_size}, {math.prod(grid)})")
        return mask

    # -- what a strategy implements (one of draw / make) ----------------------------------------------
    def draw(self, gen: RowGenerator, grid) -> torch.Tensor:
        """(len(gen), N) bool. Default: the `make` adapter, one call per row."""
        if type(self).make is MaskingStrategy.make:
            raise NotImplementedError(f"{type(self).__name__} implements neither draw() nor make()")
        rows = [self.make(1, grid, gen.device, torch.Generator(device=gen.device).manual_seed(seed))
                for seed in gen.row_seeds()]
        if not rows:
            return torch.zeros(0, math.prod(grid), dtype=torch.bool, device=gen.device)
        return torch.cat(rows).to(gen.device)

    def make(self, batch_size: int, grid, device, generator) -> torch.Tensor:
        """(batch_size, N) bool from a torch generator. Default: `draw` on rows 0..B-1, keyed by one
        seed taken from `generator`."""
        if type(self).draw is MaskingStrategy.draw:
            raise NotImplementedError(f"{type(self).__name__} implements neither draw() nor make()")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device))
        return self.draw(RowGenerator.for_range(seed, 0, 0, batch_size, "mask", device), grid)

    def num_masked(self, grid) -> int:
        """Masked tokens per sample for this grid (how the ratio is rounded)."""
        raise NotImplementedError

    def known_count(self, grid) -> int | None:
        """`num_masked(grid)`, or None for a strategy that does not say (its count is read from
        each drawn mask instead)."""
        try:
            return int(self.num_masked(tuple(grid)))
        except NotImplementedError:
            return None

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
