"""The built-in strategies: tube, random, frame, block, running_cell."""
from __future__ import annotations

import math

import torch

from .base import MaskingStrategy, lowest_k, register_masking


@register_masking("tube")
class TubeMasking(MaskingStrategy):
    """VideoMAE: one random spatial pattern of `int(ratio * H'W')` cubes, repeated at every temporal
    slice (0.9 on 8x14x14: 176 per slice, 1408 of 1568 masked)."""

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return t * int(self.ratio * h * w)

    def draw(self, gen, grid):
        t, h, w = grid
        spatial = lowest_k(gen.uniform(h * w), int(self.ratio * h * w))
        return spatial.repeat(1, t)  # raster order: the same (h, w) pattern for each t


@register_masking("random")
class RandomMasking(MaskingStrategy):
    """MAE-ST: `int(ratio * N)` cubes uniformly at random over space and time, per sample."""

    def num_masked(self, grid) -> int:
        return int(self.ratio * math.prod(grid))

    def draw(self, gen, grid):
        return lowest_k(gen.uniform(math.prod(grid)), self.num_masked(grid))


@register_masking("frame")
class FrameMasking(MaskingStrategy):
    """Whole temporal slices: `int(ratio * T')` of the T' slices are masked (7 of 8 at 0.875)."""

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return int(self.ratio * t) * h * w

    def draw(self, gen, grid):
        t, h, w = grid
        slices = lowest_k(gen.uniform(t), int(self.ratio * t))
        return slices.repeat_interleave(h * w, dim=1)


@register_masking("block")
class BlockMasking(MaskingStrategy):
    """Contiguous spatio-temporal boxes (BEiT's block masking grown into time), as in MAE-ST's
    "cube" ablation, with exactly `int(ratio * N)` cubes masked per sample.

    Each sample draws `max_boxes` boxes in sequence: spatial area uniform in `min_block`..`max_block`
    cells (default max: 0.4 H'W'), aspect ratio log-uniform in [0.3, 1/0.3], `min_frames`..T' slices,
    position uniform where the box fits. Boxes are accepted in order while the union stays within the
    target count; the first box that would overshoot is taken in part -- its new cubes in raster order
    (whole slices first, then the first cubes of one slice) -- up to the exact count. If all boxes
    fit below the target, the rest comes from uncovered cubes in raster order (about 4% of clips at
    ratio 0.9 on 8x14x14; raise `max_boxes` for higher ratios).

    Vectorized over samples with no host reads: box b owns one bit, set along each axis where the box
    spans, so the boxes covering a cube are `bits_t & bits_y & bits_x`, and the first of them is read
    off the float64 exponent of that integer. One histogram per sample gives the union size after
    every box; its cumulative sum says how many boxes fit.
    """

    def __init__(self, ratio: float = 0.9, min_block: int = 16, max_block: int | None = None,
                 min_frames: int = 1, max_boxes: int = 48):
        super().__init__(ratio)
        if not 1 <= max_boxes <= 52:  # one bit each, plus bit 0, exact in a float64 mantissa
            raise ValueError(f"block masking: max_boxes must be in 1..52, got {max_boxes}")
        self.min_block, self.max_block = min_block, max_block
        self.min_frames, self.max_boxes = min_frames, max_boxes

    def num_masked(self, grid) -> int:
        return int(self.ratio * math.prod(grid))

    def boxes(self, gen, grid):
        """Per sample and box: (t0, bt, y0, bh, x0, bw), each (R, A) int64."""
        t, h, w = grid
        A = self.max_boxes
        # six 16-bit uniforms per box from three 32-bit draws (16 bits are plenty to place a box on
        # a grid of tens of cells); float64 so every device rounds the box sizes alike
        bits = gen.bits(3 * A).view(-1, 3, A)
        u = torch.cat([bits >> 16, bits & 0xFFFF], dim=1).double().mul_(1 / 2**16).unbind(1)  # 6 x (R, A)
        lo_area = min(self.min_block, h * w)
        hi_area = self.max_block or max(self.min_block, int(0.4 * h * w))
        area = u[0] * (hi_area - lo_area) + lo_area
        aspect = torch.exp(u[1] * (math.log(1 / 0.3) - math.log(0.3)) + math.log(0.3))
        bh = torch.round(torch.sqrt(area * aspect)).clamp_(1, h).long()
        bw = torch.round(torch.sqrt(area / aspect)).clamp_(1, w).long()
        lo_t = min(self.min_frames, t)
        bt = (u[2] * (t - lo_t + 1)).long() + lo_t

        def start(v, size, extent):  # uniform in 0 .. size - extent
            return (v * (size + 1 - extent)).long()

        return start(u[3], t, bt), bt, start(u[4], h, bh), bh, start(u[5], w, bw), bw

    def draw(self, gen, grid):
        t, h, w = grid
        R, A, target = len(gen), self.max_boxes, self.num_masked(grid)
        dev = gen.device
        t0, bt, y0, bh, x0, bw = self.boxes(gen, grid)
        # box a owns bit A-a, so the first box covering a cube is its highest set bit; bit 0 is set
        # everywhere, so "no box" reads as box A
        bit = (torch.ones(A, dtype=torch.int64, device=dev) << torch.arange(A, 0, -1, device=dev)).expand(R, A)

        def axis_bits(start, extent, size):  # (R, size): the bits of the boxes spanning each index
            edges = torch.zeros(R, size + 1, dtype=torch.int64, device=dev)
            edges.scatter_add_(1, start, bit).scatter_add_(1, start + extent, -bit)
            return edges[:, :size].cumsum(1) | 1

        space = (axis_bits(y0, bh, h)[:, :, None] & axis_bits(x0, bw, w)[:, None, :]).view(R, h * w)
        time_bits = axis_bits(t0, bt, t)
        # float64 exponent (1023 + highest bit; exact, cover < 2**53) of each cube's cover bits
        exponent = torch.empty(R, t, h * w, dtype=torch.uint8, device=dev)
        per_box = torch.zeros(R * (A + 1), dtype=torch.int64, device=dev)  # histogram over A - box
        offsets = torch.arange(-1023, R * (A + 1) - 1023, A + 1, device=dev)[:, None]
        for ti in range(t):  # one temporal slice at a time keeps the int64 work in cache
            e = (space & time_bits[:, ti:ti + 1]).double().view(torch.int64) >> 52      # (R, HW)
            per_box += torch.bincount((e + offsets).flatten(), minlength=R * (A + 1))
            exponent[:, ti] = e                                       # mod 256, undone below
        first = torch.sub((A + 1023) % 256, exponent)                 # box index in uint8; A: none
        per_box = per_box.view(R, A + 1).flip(1)                      # cubes first covered by box a
        union = per_box.view(R, A + 1)[:, :A].cumsum(1)                    # union after boxes 0..k
        taken = (union <= target).sum(1, keepdim=True)                      # whole boxes accepted
        covered = torch.cat([union.new_zeros(R, 1), union], 1).gather(1, taken)
        # the next box (or, with none left, the uncovered cubes) supplies the rest in raster order:
        # whole slices of it first, then the first cubes of one slice (a cumsum over H'W' only)
        partial = first == taken.to(torch.uint8)[:, :, None]               # (R, T, HW)
        per_slice = partial.sum(2, dtype=torch.int32)                       # (R, T)
        through = per_slice.cumsum(1)
        need = target - covered                                             # (R, 1)
        whole = through <= need                                             # a prefix of the slices
        fill = partial & whole[:, :, None]
        edge = whole.sum(1).clamp_(max=t - 1)                               # the slice taken in part
        rows = torch.arange(R, device=dev)
        left = need[:, 0] - (through - per_slice)[rows, edge]               # cubes to take there
        edge_cubes = partial[rows, edge]                                    # (R, HW)
        edge_cubes &= edge_cubes.cumsum(1, dtype=torch.int32) <= left[:, None]
        fill[rows, edge] |= edge_cubes
        return ((first < taken.to(torch.uint8)[:, :, None]) | fill).view(R, t * h * w)


@register_masking("running_cell")
class RunningCellMasking(MaskingStrategy):
    """VideoMAE V2's decoder mask. A 2x2 cell holds `int(4 * ratio)` masked and the rest kept
    positions (0.5: 2 and 2); the pattern moves one position along the cell per temporal slice and
    is tiled over H' x W' (both even). Each sample starts at a random phase. Masked per sample:
    T' * H'W' * int(4 * ratio) / 4."""

    # walk the 2x2 cell in a cycle (not raster order) so a shift by one is a rotation
    _CYCLE = ((0, 0), (0, 1), (1, 1), (1, 0))

    def __init__(self, ratio: float = 0.5):
        super().__init__(ratio)
        if not 0 < int(4 * ratio) < 4:
            raise ValueError(f"running_cell needs 1-3 of 4 cell positions masked; ratio {ratio} gives "
                             f"{int(4 * ratio)}")

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return t * h * w * int(4 * self.ratio) // 4

    def patterns(self, grid) -> torch.Tensor:
        """(4, N) bool: the full mask for each starting phase."""
        t, h, w = grid
        if h % 2 or w % 2:
            raise ValueError(f"running_cell needs an even spatial grid, got {h}x{w}")
        k = int(4 * self.ratio)
        out = torch.zeros(4, t, h, w, dtype=torch.bool)
        for phase in range(4):
            for ti in range(t):
                for j in range(k):
                    dy, dx = self._CYCLE[(phase + ti + j) % 4]
                    out[phase, ti, dy::2, dx::2] = True
        return out.flatten(1)

    def draw(self, gen, grid):
        phase = (gen.uniform(1)[:, 0] * 4).long().clamp(max=3)
        return self.patterns(grid).to(gen.device)[phase]
