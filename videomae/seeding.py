"""The seeding protocol: every random draw of a training item comes from (SEED, step, global row).

The sampler (`videomae/engine/data.py`) cuts each optimizer step's global batch of
`batch x world x accum` clips into chunks; micro-step m of rank r takes chunk `c = m * world + r`,
i.e. global rows `c * batch .. c * batch + batch - 1`. A clip is therefore identified by
(step, global row) whatever the world size or the accumulation count, and so is its randomness:

    value(SEED, step, row, stream, counter)  ->  uniform float in [0, 1)

is a pure function, computed by a counter-based generator (a keyed integer hash, no state), vectorized
over rows and counters. `stream` separates the uses (encoder mask, decoder mask, drop path, ...);
`counter` numbers the values one row draws within a stream, in the order it draws them. A rank draws
only its own rows -- O(local batch) work -- and gets exactly the numbers any other layout of the same
global batch would have drawn for those rows; a resumed run replays them.

The hash works on 32-bit lanes held in int64 tensors: every intermediate stays below 2**32 and every
multiplier below 2**31, so no product overflows int64 and the same numbers come out of CPU, CUDA and
torch.compile'd code (and of plain Python ints, which is how scalar seeds are made). A row's key is
64 bits (two lanes), so distinct (SEED, step, row, stream) do not share numbers in practice.

Randomness that is not per row (elementwise dropout, timm's mixup drawing from NumPy) uses the global
generators; `seed_global_rngs` seeds them per micro-batch from (SEED, step, first global row), so they
too do not depend on the world size or on accumulation as long as the per-rank batch is the same.
"""
from __future__ import annotations

import random

import numpy as np
import torch

_M32 = 0xFFFFFFFF
# "hash prospector" 32-bit finalizer (C. Wellons); both multipliers are below 2**31 (see above)
_C1, _C2 = 0x21F0AAAD, 0x735A2D97
# lane tweaks: odd 32-bit constants that make the two key lanes independent functions of the input
_LANE = (0x9E3779B9, 0x85EBCA6B)

STREAMS = {"mask": 1, "decoder_mask": 2, "drop_path": 3, "global": 4, "augment": 5}


def hash32(x):
    """A bijection of [0, 2**32) with good avalanche; `x` is a Python int or an int64 tensor."""
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 15)


def _hash32_(x: torch.Tensor) -> torch.Tensor:
    """`hash32` in place on an int64 tensor: the same numbers, half the memory traffic (this is
    the inner loop of every per-row draw)."""
    tmp = torch.empty_like(x)
    for shift, mult in ((16, _C1), (15, _C2), (15, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp)
        if mult is not None:
            x.mul_(mult).bitwise_and_(_M32)
    return x


def _absorb(h, value):
    """Fold one non-negative integer (up to 64 bits) into the 32-bit state `h`."""
    h = hash32(h ^ (value & _M32))
    return hash32(h ^ ((value >> 32) & _M32))


def stream_id(stream) -> int:
    if isinstance(stream, str):
        if stream not in STREAMS:
            raise ValueError(f"unknown random stream {stream!r}; known: {sorted(STREAMS)}")
        return STREAMS[stream]
    return int(stream)


def row_keys(seed: int, step: int, rows, stream):
    """The two 32-bit key lanes of each row: (k1, k2), each like `rows` (int or int64 tensor)."""
    if int(seed) < 0 or int(step) < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    sid = stream_id(stream)
    keys = []
    for lane in _LANE:
        h = hash32(lane ^ sid)
        h = _absorb(h, int(seed))
        h = _absorb(h, int(step))
        keys.append(_absorb(h, rows))
    return tuple(keys)


def scalar_seed(seed: int, step: int, row: int, stream="global") -> int:
    """A 63-bit integer seed for (seed, step, row, stream), for generators that take one seed."""
    k1, k2 = row_keys(seed, step, int(row), stream)
    return ((k1 << 31) ^ k2) & (2**63 - 1)


def seed_global_rngs(seed: int, step: int, first_row: int) -> None:
    """Seed Python's, NumPy's and torch's global generators for one micro-batch, identified by the
    global row it starts at. Called by the training loop before each micro-step."""
    value = scalar_seed(seed, step, first_row, "global")
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class RowGenerator:
    """Per-row random numbers for the global `rows` of one (seed, step, stream).

    `uniform(n)` returns (len(rows), n) floats in [0, 1) on `device`; successive calls continue the
    counter, so a strategy that draws `uniform(4)` then `uniform(9)` gets counters 0-3 then 4-12 in
    every row. Row r's numbers never depend on which other rows are drawn with it.
    """

    def __init__(self, seed: int, step: int, rows, stream="mask", device=None):
        if not isinstance(rows, torch.Tensor):
            rows = torch.as_tensor(list(rows) if not isinstance(rows, range) else rows, dtype=torch.int64)
        device = torch.device(device) if device is not None else rows.device
        self.rows = rows.to(device=device, dtype=torch.int64)
        if self.rows.ndim != 1:
            raise ValueError(f"rows must be 1-D global row ids, got shape {tuple(self.rows.shape)}")
        self.seed, self.step, self.stream = int(seed), int(step), stream
        self.device = device
        self.k1, self.k2 = row_keys(self.seed, self.step, self.rows, stream)
        self.offset = 0
        self._host_rows = None  # the row ids as Python ints, when known without a device read

    @classmethod
    def for_range(cls, seed: int, step: int, first_row: int, count: int, stream="mask", device=None):
        """Rows `first_row .. first_row + count - 1`, made on `device` (no host-device copy)."""
        rows = torch.arange(first_row, first_row + count, dtype=torch.int64, device=device)
        gen = cls(seed, step, rows, stream, device)
        gen._host_rows = list(range(first_row, first_row + count))
        return gen

    def __len__(self) -> int:
        return self.rows.shape[0]

    def bits(self, n: int) -> torch.Tensor:
        """(R, n) int64 values in [0, 2**32): the next n counters of every row."""
        counters = hash32(torch.arange(self.offset, self.offset + n, dtype=torch.int64, device=self.device))
        self.offset += n
        x = _hash32_(self.k1[:, None] ^ counters[None, :])
        return _hash32_(x.bitwise_xor_(self.k2[:, None]))

    def uniform(self, n: int) -> torch.Tensor:
        """(R, n) float32 uniform in [0, 1), 24 random bits each."""
        return (self.bits(n) >> 8).to(torch.float32) * (1.0 / 2**24)

    def integers(self, low, high, n: int) -> torch.Tensor:
        """(R, n) int64 uniform in [low, high] inclusive; `low`/`high` broadcast against (R, n)."""
        span = torch.as_tensor(high, device=self.device) - torch.as_tensor(low, device=self.device) + 1
        draw = (self.uniform(n) * span).floor().to(torch.int64)
        return torch.as_tensor(low, device=self.device) + torch.minimum(draw, span - 1)

    def row_seeds(self) -> list[int]:
        """One 63-bit seed per row, for code that wants a torch.Generator per row (the adapter for
        strategies that only implement `make`). Rows built by `for_range` are known on the host;
        others are read back from their device."""
        rows = self._host_rows if self._host_rows is not None else self.rows.cpu().tolist()
        return [scalar_seed(self.seed, self.step, r, self.stream) for r in rows]
