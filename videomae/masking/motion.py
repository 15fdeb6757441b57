"""Motion-guided masking (`MASK.TYPE motion`): mask the cubes where the clip moves.

Rule, per clip: a motion score per cube (T'*H'*W', raster order t, h, w) -> its average rank in the
clip, scaled to [0, 1] (so the rule does not depend on the source's units, a static clip -- all
scores equal -- gets rank 0.5 everywhere and is masked at random) -> key = rank + temperature x
Gumbel noise -> the k cubes with the largest keys are masked. k is the count of the strategy the
rule replaces: `int(ratio * N)` as random masking, or with `tube=True` (scores averaged over time
per spatial position, whole tubes masked) `T' * int(ratio * H'W')` as tube masking. A very large
temperature turns the rule into uniform random masking (the Gumbel top-k of equal scores is a
uniform k-subset); temperature 0 masks exactly the k most moving cubes.

Default temperature 0.25: the Gumbel noise then has a standard deviation of 0.32 (pi / sqrt(6) x
0.25), a third of the rank range: the most moving cubes are masked far more often than at random
(on the test video of a moving square at ratio 0.25: 0.70 of the square's cubes with motion vectors,
0.66 with frame differences, against 0.25 at random; 0.45 at temperature 0.5), yet every cube
keeps a chance to stay visible, so a video does not show the model the same visible set every
epoch. At 0 the visible cubes of a clip would always be its most static ones.

Scores come from the loader worker (`videomae/data/datasets.py`), which sees the pixels:

- `frame_difference_scores`: per cube, the mean |x_t - x_{t-1}| over its pixels, channels and
  frames of the transformed clip (so it follows the clip's own crop, resize and flip); the first
  frame is compared with the second (its sampled neighbour).
- `cube_scores` of a per-pixel map: codec motion vector magnitudes (PyAV, `motion_vector_maps`),
  carried through the same crop, resize and flip as the pixels.

The Gumbel noise of clip `row` at `step` comes from the seeding protocol's (SEED, step, row) "mask"
stream, so masks are reproducible and do not depend on the world size or the worker.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..seeding import RowGenerator
from .base import MaskingStrategy, register_masking

DEFAULT_TEMPERATURE = 0.25
SOURCES = ("auto", "mv", "diff")


def average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """(R, N) -> (R, N) in [0, 1]: each value's average rank in its row (ties share their mean
    rank, so equal scores carry no order), divided by N - 1."""
    n = scores.shape[1]
    ordered = scores.sort(dim=1).values
    low = torch.searchsorted(ordered, scores, right=False)
    high = torch.searchsorted(ordered, scores, right=True) - 1
    return (low + high).to(torch.float32) / (2 * max(n - 1, 1))


def gumbel(gen: RowGenerator, n: int) -> torch.Tensor:
    """(R, n) standard Gumbel noise from the row generator (uniforms moved off 0 by half a step)."""
    u = gen.uniform(n) + 0.5 / 2**24
    return -torch.log(-torch.log(u))


@register_masking("motion")
class MotionMasking(MaskingStrategy):
    """See the module docstring. Without scores (`draw`, as the tools call every strategy) every
    cube scores the same and the mask is uniform random (tube-like with `tube`)."""

    def __init__(self, ratio: float = 0.9, temperature: float = DEFAULT_TEMPERATURE, tube: bool = False):
        super().__init__(ratio)
        if not temperature >= 0:
            raise ValueError(f"MASK.MOTION_TEMPERATURE must be >= 0, got {temperature}")
        self.temperature, self.tube = float(temperature), bool(tube)

    def num_masked(self, grid) -> int:
        t, h, w = grid
        return t * int(self.ratio * h * w) if self.tube else int(self.ratio * t * h * w)

    def from_scores(self, scores: torch.Tensor, gen: RowGenerator, grid) -> torch.Tensor:
        """(R, N) bool masks for motion scores (R, N), one row of `gen` per clip."""
        t, h, w = grid
        scores = scores.reshape(len(gen), t, h, w).float()
        if self.tube:
            scores = scores.mean(dim=1)
        scores = scores.flatten(1)
        key = average_ranks(scores).to(gen.device)
        if self.temperature:
            key = key + self.temperature * gumbel(gen, key.shape[1])
        k = self.num_masked(grid) // t if self.tube else self.num_masked(grid)
        mask = torch.zeros_like(key, dtype=torch.bool)
        if k:
            mask.scatter_(1, key.topk(k, dim=1).indices, True)
        return mask.repeat(1, t) if self.tube else mask

    def draw(self, gen, grid):
        return self.from_scores(torch.zeros(len(gen), math.prod(grid)), gen, grid)

    def __repr__(self) -> str:
        return f"MotionMasking(ratio={self.ratio}, temperature={self.temperature}, tube={self.tube})"


def cube_scores(motion: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Per-pixel motion (T, H, W), any real dtype -> (T'*H'*W',) float32 mean per cube."""
    x = motion.float()[None, None]
    return F.avg_pool3d(x, (tubelet, patch, patch)).flatten()


def frame_difference_scores(clip: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """uint8 clip (T, C, H, W) -> (T'*H'*W',) float32: per cube, the mean over its pixels, channels
    and frames of |x_t - x_{t-1}|; frame 0 takes |x_1 - x_0| (a one-frame clip scores 0).

    The clip comes from the transforms channels-last in memory, so (T, H, W*C) is a free view, and
    a cube's pixels and channels are one (tubelet, patch, patch*C) box of it. The differences stay
    uint8 (max - min), a third of the memory traffic of a float pass over the clip."""
    t, c, h, w = clip.shape
    if t < 2:
        return torch.zeros((t // tubelet) * (h // patch) * (w // patch))
    frames = clip.permute(0, 2, 3, 1)
    a, b = frames[1:], frames[:-1]
    diff = torch.maximum(a, b).sub_(torch.minimum(a, b))
    diff = torch.cat([diff[:1], diff])
    # the contiguous run (patch * C) first: 3x faster than one reduction over the three box axes
    rows = diff.reshape(t, h, w // patch, patch * c).sum(-1, dtype=torch.int32)
    box = rows.view(t // tubelet, tubelet, h // patch, patch, w // patch).sum(dim=(1, 3))
    return box.flatten().float() / (tubelet * patch * patch * c)


def batch_frame_difference_scores(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """uint8 batch (B, C, T, H, W), as the loader hands it out -> (B, N) frame-difference scores
    (evaluation: the validation clips' own motion)."""
    return torch.stack([frame_difference_scores(clip.transpose(0, 1).cpu(), tubelet, patch) for clip in video])


def masking_kwargs(cfg) -> dict:
    """The MASK.MOTION_* arguments of `build_masking` for MASK.TYPE motion; {} for the others."""
    if cfg.MASK.TYPE != "motion":
        return {}
    return dict(temperature=cfg.MASK.MOTION_TEMPERATURE, tube=cfg.MASK.MOTION_TUBE)


# -- motion vectors (PyAV's MOTION_VECTORS side data) -----------------------------------------------
def motion_vector_map(vectors: np.ndarray, height: int, width: int) -> np.ndarray:
    """One frame's motion vectors (PyAV structured array: w, h, dst_x, dst_y, motion_x, motion_y,
    motion_scale) -> (height, width) float32 magnitude in pixels. Each vector covers its block
    (w x h around (dst_x, dst_y)); where several do (a B-frame's forward and backward vectors), the
    largest counts; pixels of intra or skipped blocks stay 0. H.264/HEVC blocks are multiples of
    4 x 4 pixels on a 4-pixel grid, so the map is painted on 4 x 4 cells, vectorized."""
    cells = np.zeros((-(-height // 4), -(-width // 4)), dtype=np.float32)
    if len(vectors):
        scale = np.maximum(vectors["motion_scale"].astype(np.float32), 1)
        mag = np.hypot(vectors["motion_x"], vectors["motion_y"]).astype(np.float32) / scale
        moving = np.flatnonzero(mag > 0)
        if len(moving):
            v = vectors[moving]
            bw = np.maximum(v["w"].astype(np.int64) // 4, 1)
            bh = np.maximum(v["h"].astype(np.int64) // 4, 1)
            x0 = (v["dst_x"].astype(np.int64) - v["w"] // 2) // 4
            y0 = (v["dst_y"].astype(np.int64) - v["h"] // 2) // 4
            count = bw * bh
            owner = np.repeat(np.arange(len(v)), count)
            within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            cx = x0[owner] + within % bw[owner]
            cy = y0[owner] + within // bw[owner]
            inside = (cx >= 0) & (cx < cells.shape[1]) & (cy >= 0) & (cy < cells.shape[0])
            np.maximum.at(cells, (cy[inside], cx[inside]), mag[moving][owner[inside]])
    return cells.repeat(4, 0).repeat(4, 1)[:height, :width]


class LoaderMotionMasks:
    """What a loader worker needs to draw motion masks: the strategy, the cube size, the seed, the
    score source ("auto": motion vectors where the backend exports them -- PyAV --, else frame
    differences; "mv"; "diff"), and the sampler's steps per epoch (an item's key counts steps within
    its epoch; the seeding protocol counts optimizer steps from the start of the run)."""

    def __init__(self, strategy: MotionMasking, tubelet: int, patch: int, seed: int, source: str = "auto",
                 steps_per_epoch: int = 0):
        if source not in SOURCES:
            raise ValueError(f"MASK.MOTION_SOURCE must be one of {SOURCES}, got {source!r}")
        self.strategy, self.tubelet, self.patch = strategy, int(tubelet), int(patch)
        self.seed, self.source, self.steps_per_epoch = int(seed), source, int(steps_per_epoch)

    def grid(self, clip: torch.Tensor) -> tuple[int, int, int]:
        t, _, h, w = clip.shape
        return t // self.tubelet, h // self.patch, w // self.patch

    def masks(self, scores: torch.Tensor, grid, epoch: int, step: int, row: int) -> torch.Tensor:
        """(K, N) bool for the K repeated clips of the item at global batch row `row`: clip k is
        global row `row * K + k` of the flattened batch, as the training step counts rows."""
        k = scores.shape[0]
        global_step = epoch * self.steps_per_epoch + step
        gen = RowGenerator.for_range(self.seed, global_step, row * k, k, "mask")
        return self.strategy.from_scores(scores, gen, grid)
