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

    Vectorized over samples with no host reads: box a owns one bit, set along each axis where the box
    spans, so the boxes covering a cube are `bits_t & bits_y & bits_x`, and the first of them is the
    lowest set bit, read off the float32 exponent of `x & -x` (a power of two, so exact). The bits
    live in two int32 lanes of 30 boxes each (int32 work is several times cheaper than int64 on a
    CPU thread); bit 30 is set in every lane and stands for "no box in this lane". A histogram per
    sample and slice gives the union size after every box; its cumulative sum says how many boxes fit.
    """

    LANE_BOXES = 30   # boxes per int32 lane; bit 30 is the lane's "none" sentinel
    NONE = 2 * LANE_BOXES  # the first-box index of a cube no box covers

    def __init__(self, ratio: float = 0.9, min_block: int = 16, max_block: int | None = None,
                 min_frames: int = 1, max_boxes: int = 48):
        super().__init__(ratio)
        if not 1 <= max_boxes <= self.NONE:
            raise ValueError(f"block masking: max_boxes must be in 1..{self.NONE}, got {max_boxes}")
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
        halves = torch.cat([bits >> 16, bits & 0xFFFF], dim=1).to(torch.int32)  # int32 -> float64 is cheap
        u = halves.double().mul_(1 / 2**16).unbind(1)                          # 6 x (R, A)
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

    def _lane_bits(self, start, extent, size):
        """(2, R, size) int32: per lane, the bits of the boxes spanning each index of one axis, plus
        the sentinel bit."""
        R, A = start.shape
        L, dev = self.LANE_BOXES, start.device
        box = torch.arange(A, device=dev)
        bit = torch.where(box < L, 1 << box, (1 << (box - L)) << 32)  # lane 1 in the high word
        edges = torch.zeros(R, size + 1, dtype=torch.int64, device=dev)
        edges.scatter_add_(1, start, bit.expand(R, A)).scatter_add_(1, start + extent, -bit.expand(R, A))
        both = edges[:, :size].cumsum(1)
        lanes = torch.stack([both & 0xFFFFFFFF, both >> 32]).to(torch.int32)
        return lanes.bitwise_or_(1 << L)

    def _buffer(self, name, shape, dtype, device) -> torch.Tensor:
        """A work tensor kept from one draw to the next (training draws the same shapes every step):
        on a CPU, fresh multi-MB tensors cost more in page faults than the passes over them (glibc
        hands large blocks back to the system on free). Never part of a returned mask."""
        buffers = self.__dict__.setdefault("_buffers", {})
        buf = buffers.get(name)
        device = torch.device(device)
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device.type != device.type \
                or device.index not in (None, buf.device.index):
            buf = buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return buf

    def _first_boxes(self, space, ts, first, hist):
        """For rows of `first` (r, T, H'W') uint8: 127 + the first box covering each cube (the
        float32 exponent, kept biased so no op is spent removing the bias), 127 + NONE where no box
        does; `hist` (T, r, 64) += how many cubes each box covers first, per slice."""
        R, hw = space.shape[1:]
        L, dev = self.LANE_BOXES, space.device
        # index_add_, not bincount, which reads the device to size its output
        ones = torch.ones(1, dtype=torch.int32, device=dev).expand(R * hw)
        offsets = torch.arange(-127, R * 64 - 127, 64, dtype=torch.int32, device=dev)[:, None]
        # one temporal slice at a time, in place in preallocated buffers: the work stays in cache,
        # and a fresh (R, H'W') tensor per op would cost more in page faults than the op itself
        cover, neg = (self._buffer(name, (R, hw), torch.int32, dev) for name in ("cover", "neg"))
        lowest = [self._buffer(f"lowest{lane}", (R, hw), torch.float32, dev) for lane in (0, 1)]
        for ti in range(first.shape[1]):
            for lane in (0, 1):
                torch.bitwise_and(space[lane], ts[lane, ti, :, None], out=cover)
                cover.bitwise_and_(torch.neg(cover, out=neg))   # lowest set bit: 2**k, or 2**30
                lowest[lane].copy_(cover).view(torch.int32).bitwise_right_shift_(23)  # 127 + k
            index, second = (x.view(torch.int32) for x in lowest)
            # 1 where lane 0 has no box (k = L), else 0: (k + 32 - L) >> 5, as L <= 30
            lane0_empty = torch.sub(index, 127 - (32 - L), out=cover).bitwise_right_shift_(5)
            index.add_(second.sub_(127).mul_(lane0_empty))           # 127 + first box, or + NONE
            first[:, ti] = index
            hist[ti].view(-1).index_add_(0, index.add_(offsets).view(-1), ones)

    def draw(self, gen, grid):
        t, h, w = grid
        R, A, target = len(gen), self.max_boxes, self.num_masked(grid)
        dev, hw = gen.device, h * w
        t0, bt, y0, bh, x0, bw = self.boxes(gen, grid)
        ys, xs, ts = self._lane_bits(y0, bh, h), self._lane_bits(x0, bw, w), self._lane_bits(t0, bt, t)
        space = self._buffer("space", (2, R, h, w), torch.int32, dev)
        torch.bitwise_and(ys[:, :, :, None], xs[:, :, None, :], out=space)
        space = space.view(2, R, hw)
        ts = ts.transpose(1, 2).contiguous()                                # (2, T, R)
        first = self._buffer("first", (R, t, hw), torch.uint8, dev)
        hist = self._buffer("hist", (t, R, 64), torch.int32, dev).zero_()
        self._first_boxes(space, ts, first, hist)
        union = hist.sum(0, dtype=torch.int32)[:, :A].cumsum(1)             # union after boxes 0..k
        taken = (union <= target).sum(1)                                    # whole boxes accepted
        covered = torch.cat([union.new_zeros(R, 1), union], 1).gather(1, taken[:, None])[:, 0]
        # the next box (or, with none left, the uncovered cubes) supplies the rest in raster order:
        # whole slices of it first, then the first cubes of one slice
        next_box = torch.where(taken == A, self.NONE, taken)
        per_slice = hist.gather(2, next_box.expand(t, R)[:, :, None])[:, :, 0].t()          # (R, T)
        through = per_slice.cumsum(1)
        need = target - covered                                             # (R,)
        edge = (through <= need[:, None]).sum(1).clamp_(max=t - 1)          # the slice taken in part
        rows = torch.arange(R, device=dev)
        left = need - (through - per_slice)[rows, edge]                     # cubes to take there
        # before the edge slice the next box is taken whole (first <= next), after it not at all
        limit = torch.where(torch.arange(t, device=dev) < edge[:, None], next_box[:, None] + 1, taken[:, None])
        mask = first < (limit + 127).to(torch.uint8)[:, :, None]
        edge_cubes = first[rows, edge] == (127 + next_box).to(torch.uint8)[:, None]   # (R, HW)
        edge_cubes &= edge_cubes.cumsum(1, dtype=torch.int32) <= left[:, None]
        mask[rows, edge] |= edge_cubes
        return mask.view(R, t * hw)


@register_masking("running_cell")
class RunningCellMasking(MaskingStrategy):
    """VideoMAE V2's decoder mask (its `RunningCellMaskingGenerator`). A 2x2 cell is read in raster
    order (top-left, top-right, bottom-left, bottom-right) as a window onto a ring of four slots:
    `k = int(4 * ratio)` masked slots followed by `4 - k` kept ones (0.5: 2 and 2). At phase p and
    temporal slice t the window starts at slot `p + t + 1` (V2 advances its pointer before reading
    the first slice), so raster position i of every cell is masked iff `(i + p + t + 1) % 4 < k`.
    The cell is tiled over H' x W' (both even). Each sample draws one of the 4 phases, uniformly.
    Masked per sample: T' * H'W' * k / 4 (each slice masks k of every 4 cells' positions).

    Ratio 0.5, phase 0, per slice: [1,0,0,1], [0,0,1,1], [0,1,1,0], [1,1,0,0]. (Walking the cell
    as a cycle instead gives none of V2's four phase patterns.)"""

    def __init__(self, ratio: float = 0.5):
        super().__init__(ratio)
        if not 0 < int(4 * ratio) < 4:
            raise ValueError(f"running_cell needs 1-3 of 4 cell positions masked; ratio {ratio} gives "
                             f"{int(4 * ratio)}")

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return t * h * w * int(4 * self.ratio) // 4

    def patterns(self, grid) -> torch.Tensor:
        """(4, N) bool: the full mask for each phase (index = V2's starting pointer)."""
        t, h, w = grid
        if h % 2 or w % 2:
            raise ValueError(f"running_cell needs an even spatial grid, got {h}x{w}")
        k = int(4 * self.ratio)
        cell = 2 * (torch.arange(h) % 2)[:, None] + (torch.arange(w) % 2)[None, :]   # raster index in the cell
        phase = torch.arange(4)[:, None, None, None]
        slot = (cell + torch.arange(t)[:, None, None] + phase + 1) % 4                # (4, T', H', W')
        return (slot < k).flatten(1)

    def draw(self, gen, grid):
        phase = (gen.uniform(1)[:, 0] * 4).long().clamp(max=3)
        return self.patterns(grid).to(gen.device)[phase]
