"""Position embeddings: the fixed 1-D sinusoid of official VideoMAE and the separable learned
space + time table of MAE-ST, plus resizing either to a new token grid (T', H', W')."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """(1, N, D) table of official VideoMAE / "Attention is all you need".

    Column 2i holds sin(pos / 10000^(2i/D)), column 2i+1 the cos with the same frequency. Built in
    float64 (as the original numpy code) and cast to float32 at the end, so values match to the bit.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64) / dim
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)[None]


class SinusoidPosEmbed(nn.Module):
    """Fixed table over the flattened token index; a non-persistent buffer (never in checkpoints)."""

    def __init__(self, grid_size: tuple[int, int, int], dim: int):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.dim = dim
        self.register_buffer("table", sinusoid_table(math.prod(grid_size), dim), persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table  # (1, N, D)


class SeparablePosEmbed(nn.Module):
    """MAE-ST: a learned spatial table over H'W' plus a learned temporal table over T', summed.

    Parameter names follow MAE-ST (`pos_embed_spatial`, `pos_embed_temporal`).
    """

    def __init__(self, grid_size: tuple[int, int, int], dim: int):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.dim = dim
        t, h, w = grid_size
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, dim))
        nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)

    def forward(self) -> torch.Tensor:
        t, hw = self.pos_embed_temporal.shape[1], self.pos_embed_spatial.shape[1]
        # token (t, s) gets spatial[s] + temporal[t]; raster order puts t outermost
        table = self.pos_embed_spatial.repeat(1, t, 1) + torch.repeat_interleave(
            self.pos_embed_temporal, hw, dim=1)
        return table  # (1, N, D)


def build_pos_embed(kind: str, grid_size, dim: int) -> nn.Module:
    if kind == "sinusoid":
        return SinusoidPosEmbed(grid_size, dim)
    if kind == "separable":
        return SeparablePosEmbed(grid_size, dim)
    raise ValueError(f"unknown position embedding {kind!r}: use 'sinusoid' or 'separable'")


def resize_separable(spatial: torch.Tensor, temporal: torch.Tensor, old_grid, new_grid):
    """Resize MAE-ST tables: bicubic over (H', W') for space, linear over T' for time."""
    (t0, h0, w0), (t1, h1, w1) = tuple(old_grid), tuple(new_grid)
    dim = spatial.shape[-1]
    if (h0, w0) != (h1, w1):
        s = spatial.reshape(1, h0, w0, dim).permute(0, 3, 1, 2).float()
        s = F.interpolate(s, size=(h1, w1), mode="bicubic", align_corners=False)
        spatial = s.permute(0, 2, 3, 1).reshape(1, h1 * w1, dim).to(spatial.dtype)
    if t0 != t1:
        tt = temporal.transpose(1, 2).float()
        tt = F.interpolate(tt, size=t1, mode="linear", align_corners=False)
        temporal = tt.transpose(1, 2).to(temporal.dtype)
    return spatial, temporal


def resize_pos_embed(module: nn.Module, new_grid) -> nn.Module:
    """Return a position embedding of the same kind for `new_grid`.

    The sinusoid is rebuilt for the new token count (official VideoMAE does the same when the
    frame count or resolution changes); learned separable tables are interpolated.
    """
    new_grid = tuple(new_grid)
    if isinstance(module, SinusoidPosEmbed):
        return SinusoidPosEmbed(new_grid, module.dim).to(module.table.device)
    if isinstance(module, SeparablePosEmbed):
        out = SeparablePosEmbed(new_grid, module.dim).to(module.pos_embed_spatial.device)
        spatial, temporal = resize_separable(module.pos_embed_spatial.data,
                                             module.pos_embed_temporal.data, module.grid_size, new_grid)
        out.pos_embed_spatial.data.copy_(spatial)
        out.pos_embed_temporal.data.copy_(temporal)
        return out
    raise TypeError(f"cannot resize {type(module).__name__}")
