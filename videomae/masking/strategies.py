"""The built-in strategies: tube, random, frame, block, running_cell."""
from __future__ import annotations

import math

import torch

from .base import MaskingStrategy, lowest_k, register_masking, uniform


@register_masking("tube")
class TubeMasking(MaskingStrategy):
    """VideoMAE: one random spatial pattern of `int(ratio * H'W')` cubes, repeated at every temporal
    slice (0.9 on 8x14x14: 176 per slice, 1408 of 1568 masked)."""

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return t * int(self.ratio * h * w)

    def make(self, batch_size, grid, device, generator):
        t, h, w = grid
        spatial = lowest_k(uniform((batch_size, h * w), device, generator), int(self.ratio * h * w))
        return spatial.repeat(1, t)  # raster order: the same (h, w) pattern for each t


@register_masking("random")
class RandomMasking(MaskingStrategy):
    """MAE-ST: `int(ratio * N)` cubes uniformly at random over space and time, per sample."""

    def num_masked(self, grid) -> int:
        return int(self.ratio * math.prod(grid))

    def make(self, batch_size, grid, device, generator):
        n = math.prod(grid)
        return lowest_k(uniform((batch_size, n), device, generator), self.num_masked(grid))


@register_masking("frame")
class FrameMasking(MaskingStrategy):
    """Whole temporal slices: `int(ratio * T')` of the T' slices are masked (7 of 8 at 0.875)."""

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return int(self.ratio * t) * h * w

    def make(self, batch_size, grid, device, generator):
        t, h, w = grid
        slices = lowest_k(uniform((batch_size, t), device, generator), int(self.ratio * t))
        return slices.repeat_interleave(h * w, dim=1)


@register_masking("block")
class BlockMasking(MaskingStrategy):
    """Contiguous spatio-temporal boxes (BEiT's block masking grown into time), as in MAE-ST's
    "cube" ablation. Boxes of random area (`min_block`..`max_block` spatial cells, aspect ratio in
    [0.3, 1/0.3], `min_frames`..T' slices) are added while they fit under `int(ratio * N)`; the
    remainder is topped up with single cubes bordering masked ones, so every sample masks exactly
    `int(ratio * N)`."""

    def __init__(self, ratio: float = 0.9, min_block: int = 16, max_block: int | None = None,
                 min_frames: int = 1, max_attempts: int = 64):
        super().__init__(ratio)
        self.min_block, self.max_block = min_block, max_block
        self.min_frames, self.max_attempts = min_frames, max_attempts

    def num_masked(self, grid) -> int:
        return int(self.ratio * math.prod(grid))

    def make(self, batch_size, grid, device, generator):
        # boxes are placed by a small CPU loop; its seed comes from the caller's generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        cpu = torch.Generator().manual_seed(seed)
        masks = [self._one(grid, cpu) for _ in range(batch_size)]
        out = torch.stack(masks) if masks else torch.zeros(0, math.prod(grid), dtype=torch.bool)
        return out.to(device)

    def _randint(self, low, high, gen) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=gen))

    def _one(self, grid, gen) -> torch.Tensor:
        t, h, w = grid
        target = self.num_masked(grid)
        mask = torch.zeros(t, h, w, dtype=torch.bool)
        max_area = self.max_block or max(self.min_block, int(0.4 * h * w))
        count = 0
        for _ in range(self.max_attempts):
            if count >= target:
                break
            area = torch.empty(1).uniform_(min(self.min_block, h * w), max_area, generator=gen).item()
            log_aspect = torch.empty(1).uniform_(math.log(0.3), math.log(1 / 0.3), generator=gen).item()
            bh = max(1, min(h, round(math.sqrt(area * math.exp(log_aspect)))))
            bw = max(1, min(w, round(math.sqrt(area / math.exp(log_aspect)))))
            bt = self._randint(min(self.min_frames, t), t, gen)
            t0, y0, x0 = (self._randint(0, t - bt, gen), self._randint(0, h - bh, gen),
                          self._randint(0, w - bw, gen))
            box = mask[t0:t0 + bt, y0:y0 + bh, x0:x0 + bw]
            added = int((~box).sum())
            if 0 < added <= target - count:
                box.fill_(True)
                count += added
        flat = mask.flatten()
        if count < target:  # top up next to existing boxes first, so the blocks stay blocky
            near = _dilate(mask).flatten() & ~flat
            noise = torch.rand(flat.numel(), generator=gen) + (~near).float() + flat.float() * 2
            flat[noise.argsort()[: target - count]] = True
        return flat


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()[None, None]
    return torch.nn.functional.max_pool3d(m, kernel_size=3, stride=1, padding=1)[0, 0] > 0


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

    def make(self, batch_size, grid, device, generator):
        noise = uniform((batch_size, 4), device, generator)
        phase = noise.argmax(dim=1)
        return self.patterns(grid).to(device)[phase]
