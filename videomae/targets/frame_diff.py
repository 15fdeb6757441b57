"""`frame_diff`: temporal differences of pixels (the target of MotionMAE-style methods)."""
from __future__ import annotations

import torch

from ..models.targets import patchify, unnormalize
from .base import ReconstructionTarget, register_target
from .pixel import cube_width


def frame_differences(pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> x_f - x_{f-1} for every frame f; the clip's first frame is its own previous
    frame, so its difference is zero."""
    return torch.cat([torch.zeros_like(pixels[:, :, :1]), pixels[:, :, 1:] - pixels[:, :, :-1]], dim=2)


@register_target("frame_diff")
class FrameDiffTarget(ReconstructionTarget):
    """For each frame f of a cube, x_f - x_{f-1} in [0, 1] pixels, where f-1 is the previous frame of
    the clip (so a cube's first frame differs from the last frame of the cube before it in time);
    the clip's first frame gives zeros. Laid out and normalized per cube as `pixel`: (dt, dy, dx, c),
    channel fastest, `(x - mean) / (std + 1e-6)` per channel over the cube. A cube without motion
    (all zeros) stays zero."""

    eps = 1e-6
    pixel_layout = True

    def width(self, enc) -> int:
        return cube_width(enc)

    def __call__(self, video, enc, ids=None):
        diff = frame_differences(unnormalize(video))                              # B, C, T, H, W
        cubes = patchify(diff, enc.tubelet_size, enc.patch_size, ids)              # B, M, P, C
        mean = cubes.mean(dim=-2, keepdim=True)
        std = cubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        return ((cubes - mean) / (std + self.eps)).flatten(2)
