"""The built-in strategies: tube, random, frame, block, running_cell."""
from __future__ import annotations

import functools
import math
import random

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
    """Spatio-temporal boxes (BEiT's block masking grown into time, as in MAE-ST's "cube" ablation),
    with exactly `int(ratio * N)` cubes masked per sample.

    Each sample cuts its T' slices into `segments` temporal segments (cut points uniform in 0..T';
    a segment may be empty) and gives each segment a tiling of the H' x W' plane into rectangles
    that meet BEiT's block constraints: area `min_block`..`max_block` cells (default max 0.4 H'W'),
    aspect ratio in [0.3, 1/0.3]. A segment x rectangle is a box; the boxes do not overlap and fill
    the clip. Boxes are masked whole in a random order while the count stays within the target; the
    next box supplies the rest in its own raster order (whole slices, then whole rows of one slice,
    then the first cubes of one row). Every masked box but that last one meets the constraints.

    The tilings come from a bank of `BANK_SIZE` random guillotine tilings per grid, drawn once from a
    fixed seed (`random_tilings`), so every rank and process holds the same bank; a sample picks one
    per segment. (Sampling a constrained tiling is a sequential process; a bank keeps the draw
    vectorized.) On a grid too small for `min_block`, the bank lowers the minimum area to the
    largest the grid can be tiled with.

    Because the boxes are disjoint, the count needs no per-cube counting: a cumulative sum of box
    volumes picks the boxes. Only the minority side is painted -- the kept boxes at ratios >= 0.5,
    else the masked ones -- as per-axis bit masks (bit a set along each axis where box a spans), so
    a cube lies in a painted box iff `bits_t & bits_y & bits_x != 0`: one integer AND per cube (the
    y-x words are shared by the T' slices), no host reads.
    """

    BANK_SIZE = 1024
    BANK_SEED = 0x5EED

    def __init__(self, ratio: float = 0.9, min_block: int = 16, max_block: int | None = None,
                 segments: int = 3):
        super().__init__(ratio)
        if min_block < 1 or segments < 1:
            raise ValueError(f"block masking: min_block and segments must be >= 1, got {min_block} "
                             f"and {segments}")
        self.min_block, self.max_block, self.segments = min_block, max_block, segments

    def num_masked(self, grid) -> int:
        return int(self.ratio * math.prod(grid))

    def tilings(self, grid) -> list[list[tuple[int, int, int, int]]]:
        """The bank of spatial tilings for this grid: each a list of (y0, y1, x0, x1), half-open."""
        _, h, w = grid
        max_area = self.max_block or int(0.4 * h * w)
        return random_tilings(h, w, self.min_block, max_area, self.BANK_SIZE, self.BANK_SEED)

    def _bank(self, grid, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank as a (BANK_SIZE, K, 4) int64 tensor on `device`, padded with empty rectangles,
        and the rectangles' areas (BANK_SIZE, K); made once per grid and device."""
        cache = self.__dict__.setdefault("_banks", {})
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:     # "cuda" and "cuda:0" share one copy
            device = torch.device("cuda", torch.cuda.current_device())
        key = (tuple(grid), str(device))
        if key not in cache:
            tilings = self.tilings(grid)
            bank = torch.zeros(len(tilings), max(map(len, tilings)), 4, dtype=torch.int64)
            for i, tiling in enumerate(tilings):
                bank[i, :len(tiling)] = torch.tensor(tiling)
            y0, y1, x0, x1 = bank.unbind(-1)
            cache[key] = bank.to(device), ((y1 - y0) * (x1 - x0)).to(device)
        return cache[key]

    def layout(self, gen, grid):
        """Per sample, from one draw of the row generator: the segment bounds (R, S + 1), each
        segment's tiling as an index into the bank (R, S), and a uniform key per box (R, C) that
        orders the masking. Box s * K + k is segment s x rectangle k of its tiling (K: the bank's
        widest tiling; missing rectangles and empty segments give empty boxes)."""
        t, S, R = grid[0], self.segments, len(gen)
        bank, _ = self._bank(grid, gen.device)
        bits = gen.bits(2 * S - 1 + S * bank.shape[1])
        uniform = (bits >> 8).to(torch.float32).mul_(1.0 / 2**24)      # as RowGenerator.uniform
        cuts = (uniform[:, :S - 1] * (t + 1)).long().clamp_(max=t).sort(dim=1).values
        bounds = torch.cat([cuts.new_zeros(R, 1), cuts, cuts.new_full((R, 1), t)], 1)
        return bounds, bits[:, S - 1:2 * S - 1] % bank.shape[0], uniform[:, 2 * S - 1:]

    def volumes(self, grid, bounds, tilings) -> torch.Tensor:
        """(R, C) cubes per box."""
        _, areas = self._bank(grid, bounds.device)
        per_segment = areas.index_select(0, tilings.view(-1)).view(*tilings.shape, -1)     # (R, S, K)
        return (bounds.diff(dim=1)[:, :, None] * per_segment).flatten(1)

    def boxes(self, grid, bounds, tilings, index) -> torch.Tensor:
        """(R, J, 6) int64: boxes `index` (R, J) as (t0, t1, y0, y1, x0, x1), half-open."""
        bank, _ = self._bank(grid, bounds.device)
        segment, rect = index.div(bank.shape[1], rounding_mode="floor"), index.remainder(bank.shape[1])
        times = torch.stack([bounds.gather(1, segment), bounds.gather(1, segment + 1)], -1)
        flat = tilings.gather(1, segment) * bank.shape[1] + rect
        return torch.cat([times, bank.view(-1, 4).index_select(0, flat.view(-1)).view(*flat.shape, 4)], -1)

    def order(self, keys, volume) -> torch.Tensor:
        """(R, C) the order boxes are masked in: by their random keys, empty boxes first when the
        kept side is painted and last otherwise (so the painted boxes sit together at one end)."""
        keys = keys.masked_fill(volume == 0, -1.0 if self._paints_kept() else 2.0)
        return torch.sort(keys, dim=1, stable=True).indices   # stable: equal keys order alike everywhere

    def draw(self, gen, grid):
        target, kept = self.num_masked(grid), self._paints_kept()
        bounds, tilings, keys = self.layout(gen, grid)
        volume = self.volumes(grid, bounds, tilings)
        R, C = volume.shape
        order = self.order(keys, volume)
        in_order = volume.gather(1, order)
        through = in_order.cumsum(1)
        taken = torch.searchsorted(through, torch.full((R, 1), target, device=through.device), right=True)
        covered = (through - in_order).gather(1, taken)                 # whole boxes masked: taken < C
        slot = torch.arange(self._slots(grid), device=volume.device)
        if kept:                                    # kept: the boxes after the partial one
            position = torch.cat([taken, taken + 1 + slot], 1)
            whole = position[:, 1:] < C
        else:                                       # masked: the boxes before it
            position = torch.cat([taken, slot.expand(R, -1)], 1)
            whole = position[:, 1:] < taken
        picked = self.boxes(grid, bounds, tilings, order.gather(1, position.clamp_(max=C - 1)))
        partial = self._split(picked[:, 0], (target - covered)[:, 0], kept)
        return _inside_boxes(torch.cat([picked[:, 1:] * whole[..., None], partial], 1), grid, outside=kept)

    # -- helpers -------------------------------------------------------------------------------------
    def _paints_kept(self) -> bool:
        return self.ratio >= 0.5

    def _slots(self, grid) -> int:
        """How many whole boxes the painted side can hold: its cube count over the smallest box."""
        cache = self.__dict__.setdefault("_slot_counts", {})
        key = (tuple(grid), self.ratio)
        if key not in cache:
            smallest = min((y1 - y0) * (x1 - x0) for tiling in self.tilings(grid) for y0, y1, x0, x1 in tiling)
            n, target = math.prod(grid), self.num_masked(grid)
            boxes = self.segments * max(map(len, self.tilings(grid)))
            cache[key] = max(1, min(boxes, (n - target if self._paints_kept() else target) // smallest))
        return cache[key]

    @staticmethod
    def _split(box, count, rest: bool):
        """The first `count` cubes of `box` (R, 6) in its raster order (or, with `rest`, the other
        cubes) as three boxes (R, 3, 6): whole slices, whole rows of the next slice, the start of
        the next row (or the rest of that row, the rest of that slice, the slices after it)."""
        t0, t1, y0, y1, x0, x1 = box.unbind(1)
        area, width = (y1 - y0) * (x1 - x0), x1 - x0
        slices = count // area
        rows = (count - slices * area) // width
        ts = t0 + slices
        yr = y0 + rows
        xc = x0 + (count - slices * area - rows * width)
        if rest:
            parts = [(ts + 1, t1, y0, y1, x0, x1), (ts, ts + 1, yr + 1, y1, x0, x1), (ts, ts + 1, yr, yr + 1, xc, x1)]
        else:
            parts = [(t0, ts, y0, y1, x0, x1), (ts, ts + 1, y0, yr, x0, x1), (ts, ts + 1, yr, yr + 1, x0, xc)]
        return torch.stack([torch.stack(part, 1) for part in parts], 1)


def _inside_boxes(boxes, grid, outside: bool = False) -> torch.Tensor:
    """(R, N) bool: cubes inside any of the boxes (R, B, 6), or outside all of them. Box b owns bit
    b of an integer per axis position, set where the box spans that axis; a cube is inside box b
    iff its t, y and x words all have bit b. Up to 63 boxes, in the narrowest integer that holds
    them (several lanes beyond that)."""
    R, B = boxes.shape[:2]
    if B > 63:
        inside = torch.zeros(R, math.prod(grid), dtype=torch.bool, device=boxes.device)
        for first in range(0, B, 63):
            inside |= _inside_boxes(boxes[:, first:first + 63], grid)
        return inside.logical_not_() if outside else inside
    t, h, w = grid
    dev = boxes.device
    # the three axes side by side, each with one spare slot: +bit where a box starts, -bit where it
    # ends; a running sum then gives each position's word, and returns to 0 at each axis's end
    axis = torch.arange(6, device=dev) // 2                         # t0 t1 y0 y1 x0 x1 -> 0 0 1 1 2 2
    offset = axis * (t + 1) + (axis == 2) * (h - t)                  # 0, t + 1, t + h + 2 (made on the device: no copy)
    bit = torch.ones(B, dtype=torch.int64, device=dev) << torch.arange(B, device=dev)
    signed = torch.stack([bit, -bit] * 3, -1).expand(R, B, 6)
    edges = torch.zeros(R, t + h + w + 3, dtype=torch.int64, device=dev)
    edges.scatter_add_(1, (boxes + offset).view(R, -1), signed.reshape(R, -1))
    dtype = torch.int16 if B <= 15 else torch.int32 if B <= 31 else torch.int64
    words = edges.cumsum(1).to(dtype)
    words_t, words_y, words_x = words[:, :t], words[:, t + 1:t + h + 1], words[:, t + h + 2:-1]
    words_yx = (words_y[:, :, None] & words_x[:, None, :]).view(R, 1, h * w)
    words_t = words_t[:, :, None]
    inside = torch.empty(R, t, h * w, dtype=torch.bool, device=dev)
    # (rows, T', 1) & (rows, 1, H'W'): the long axis innermost, where the AND vectorizes; a few
    # hundred rows at a time into one small buffer, which stays in cache (a fresh full-size
    # intermediate costs more in page faults on a CPU than the AND itself)
    step = max(1, (1 << 18) // (t * h * w)) if dev.type == "cpu" else R
    buffer = torch.empty(min(R, step), t, h * w, dtype=dtype, device=dev)
    for start in range(0, R, step):
        rows = slice(start, start + step)
        part = buffer[:inside[rows].shape[0]]
        torch.bitwise_and(words_t[rows], words_yx[rows], out=part)
        inside[rows].copy_(part)               # nonzero -> True; several times cheaper than `ne` on a CPU
    inside = inside.view(R, -1)
    return inside.logical_not_() if outside else inside


@functools.lru_cache(maxsize=32)
def random_tilings(h: int, w: int, min_area: int, max_area: int, count: int, seed: int):
    """`count` random guillotine tilings of an h x w grid into rectangles (y0, y1, x0, x1) with area
    in [lo, max(max_area, lo)] and aspect ratio h/w in [0.3, 1/0.3]; lo is `min_area`, lowered as
    far as needed for the grid to be tileable at all. A rectangle that may be a block stops with
    probability 1/2, otherwise it is cut in two at a position drawn uniformly among the cuts whose
    both sides can still be tiled. Deterministic: a fixed seed, plain Python."""
    for lo in range(min(min_area, h * w), 0, -1):
        hi = max(max_area, lo)

        def is_block(a, b, lo=lo, hi=hi):
            return lo <= a * b <= hi and 0.3 <= a / b <= 1 / 0.3

        tileable = [[False] * (w + 1) for _ in range(h + 1)]
        for a in range(1, h + 1):
            for b in range(1, w + 1):
                tileable[a][b] = (is_block(a, b)
                                  or any(tileable[i][b] and tileable[a - i][b] for i in range(1, a))
                                  or any(tileable[a][j] and tileable[a][b - j] for j in range(1, b)))
        if tileable[h][w]:
            break
    rng = random.Random(seed)
    tilings = []
    for _ in range(count):
        tiling, todo = [], [(0, h, 0, w)]
        while todo:
            y0, y1, x0, x1 = todo.pop()
            a, b = y1 - y0, x1 - x0
            cuts = [(i, 0) for i in range(1, a) if tileable[i][b] and tileable[a - i][b]]
            cuts += [(0, j) for j in range(1, b) if tileable[a][j] and tileable[a][b - j]]
            if is_block(a, b) and (not cuts or rng.random() < 0.5):
                tiling.append((y0, y1, x0, x1))
                continue
            i, j = rng.choice(cuts)
            if i:
                todo += [(y0, y0 + i, x0, x1), (y0 + i, y1, x0, x1)]
            else:
                todo += [(y0, y1, x0, x0 + j), (y0, y1, x0 + j, x1)]
        tilings.append(sorted(tiling))
    return tilings


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
