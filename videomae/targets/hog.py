"""`hog`: MaskFeat's histograms of oriented gradients, as PySlowFast's HOGLayerC computes them.

Per frame and colour channel of the [0, 1] clip:

1. gradients: the 3x3 Sobel pair applied as cross-correlation (what `F.conv2d` does) to the frame
   reflect-padded by one pixel: kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]], ky = kx transposed;
2. magnitude sqrt(gx^2 + gy^2); orientation atan2(gx, gy) (in that argument order, as HOGLayerC),
   binned unsigned into 9 bins: bin = floor(9 * angle / pi) mod 9, so angle and angle + pi share one;
3. magnitudes weighted by a 16x16 Gaussian window (std 8, centred between pixels 7 and 8, summing
   to 1) tiled over the frame from its top-left corner (frame sides must be multiples of 16);
4. each pixel's weighted magnitude added to its bin, summed over 8x8-pixel cells;
5. each cell's 9-bin histogram L2-normalized (per channel; an all-zero cell stays zero).

HOGLayerC tiles its window by the frame's height along both sides (its frames are square); here each
side is tiled by its own length, which is the same for square frames.

Layout per token (a cube of tubelet x p x p pixels, p a multiple of 8, k = p / 8 cells a side):
(dt, c, bin, cy, cx), frames outermost in frame order, then colour channel, orientation bin and the
cube's k x k cells in raster order: width tubelet * C * 9 * k^2 (2 * 3 * 9 * 4 = 216 for 2x16x16).
Scaling a channel (ImageNet normalization) scales its gradients alike, which the L2 normalization
undoes, so the target does not depend on the input normalization beyond float rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.targets import unnormalize
from .base import ReconstructionTarget, gather_tokens, register_target

NBINS, CELL, WINDOW = 9, 8, 16


def gaussian_window(size: int = WINDOW, std: float | None = None, device=None) -> torch.Tensor:
    """(size, size) float32 Gaussian, std size / 2 by default, normalized to sum 1."""
    std = size / 2 if std is None else std
    n = (torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2) / std
    w = torch.exp(-0.5 * n ** 2)
    k = torch.outer(w, w)
    return k / k.sum()


def sobel_kernels(channels: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, 1, 3, 3) kx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]] and ky = kx transposed, for a grouped
    conv. Made on the device from arange (no host-to-device copy per step, nothing cached)."""
    i = torch.arange(3, dtype=torch.float32, device=device) - 1
    kx = torch.outer(2 - i.abs(), i.flip(0))        # smoothing [1, 2, 1] down, difference [1, 0, -1] across
    return kx.expand(channels, 1, 3, 3), kx.t().expand(channels, 1, 3, 3)


def hog_frames(frames: torch.Tensor, nbins: int = NBINS, cell: int = CELL) -> torch.Tensor:
    """(F, C, H, W) float frames -> (F, C, nbins, H / cell, W / cell) L2-normalized histograms."""
    n, c, h, w = frames.shape
    kx, ky = sobel_kernels(c, frames.device)
    window = gaussian_window(device=frames.device)
    padded = F.pad(frames, (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(padded, kx, groups=c)
    gy = F.conv2d(padded, ky, groups=c)
    magnitude = torch.sqrt(gx * gx + gy * gy)
    bins = torch.floor(torch.atan2(gx, gy) * (nbins / math.pi)).long().remainder_(nbins)
    size = window.shape[0]
    magnitude = magnitude * window.repeat(h // size, w // size)
    # one bin at a time: a one-hot over all 9 bins would hold 9 float copies of the clip batch
    # (2.8 GB at ViT-B's batch of 32 x 16 frames), one bin holds one
    hist = torch.stack([(magnitude * (bins == b)).view(n, c, h // cell, cell, w // cell, cell).sum((3, 5))
                        for b in range(nbins)], dim=2)                   # F, C, bins, H / cell, W / cell
    return F.normalize(hist, p=2, dim=2)


@register_target("hog")
class HOGTarget(ReconstructionTarget):
    """MaskFeat's HOG of each frame of the cube (see the module text for the formula and layout)."""

    def width(self, enc) -> int:
        return enc.tubelet_size * enc.in_chans * NBINS * (enc.patch_size // CELL) ** 2

    def check(self, enc, grid) -> None:
        if enc.patch_size % CELL:
            raise ValueError(f"MODEL.TARGET hog pools {CELL}x{CELL}-pixel cells: the patch size ({enc.patch_size}) "
                             f"must be a multiple of {CELL}")
        if enc.img_size % WINDOW:
            raise ValueError(f"MODEL.TARGET hog tiles a {WINDOW}-pixel Gaussian window: MODEL.IMG_SIZE "
                             f"({enc.img_size}) must be a multiple of {WINDOW}")

    def __call__(self, video, enc, ids=None):
        B, C, T, H, W = video.shape
        t, p = enc.tubelet_size, enc.patch_size
        k = p // CELL
        if H % WINDOW or W % WINDOW or p % CELL:
            raise ValueError(f"hog target: frames {H}x{W} must be multiples of {WINDOW} and the patch size "
                             f"{p} a multiple of {CELL}")
        # float32 whatever the run's autocast: a bf16 gradient would move pixels across bin edges
        with torch.autocast(video.device.type, enabled=False):
            frames = unnormalize(video).transpose(1, 2).reshape(B * T, C, H, W)
            hist = hog_frames(frames)                                   # B*T, C, 9, H/8, W/8
        gt, gh, gw = T // t, H // p, W // p
        hist = hist.view(B, gt, t, C, NBINS, gh, k, gw, k)
        tokens = hist.permute(0, 1, 5, 7, 2, 3, 4, 6, 8).reshape(B, gt * gh * gw, t * C * NBINS * k * k)
        return gather_tokens(tokens, ids)
