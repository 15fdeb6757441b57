"""`pixel` (VideoMAE's per-cube normalized pixels, the default) and `pixel_raw` ([0, 1] pixels)."""
from __future__ import annotations

from ..models.targets import cube_targets
from .base import ReconstructionTarget, register_target


def cube_width(enc) -> int:
    return enc.tubelet_size * enc.patch_size ** 2 * enc.in_chans


@register_target("pixel")
class PixelTarget(ReconstructionTarget):
    """Each cube's [0, 1] pixels, (dt, dy, dx, c) with channel fastest, normalized per channel by the
    cube's mean and unbiased std: `(x - mean) / (std + 1e-6)` (official VideoMAE, norm_pix_loss)."""

    normalize = True
    pixel_layout = True

    def width(self, enc) -> int:
        return cube_width(enc)

    def __call__(self, video, enc, ids=None):
        return cube_targets(video, enc.tubelet_size, enc.patch_size, normalize=self.normalize, ids=ids)


@register_target("pixel_raw")
class PixelRawTarget(PixelTarget):
    """Each cube's [0, 1] pixels, not normalized (MODEL.NORM_TARGET False)."""

    normalize = False
