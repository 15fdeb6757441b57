"""Cube (tubelet) tokenizer: a video becomes a sequence of 3-D cube embeddings."""
from __future__ import annotations

import torch
from torch import nn


class CubeEmbed(nn.Module):
    """Conv3d with kernel = stride = (tubelet, p, p), then tokens in raster order (t, h, w).

    Input (B, C, T, H, W) -> tokens (B, N, D) with N = T/tubelet * H/p * W/p.
    The sub-module is named `proj` so official VideoMAE keys (`patch_embed.proj.weight`) load as is.
    """

    def __init__(self, img_size=224, patch_size=16, num_frames=16, tubelet_size=2,
                 in_chans=3, embed_dim=768):
        super().__init__()
        img_h, img_w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        for name, size, step in (("num_frames", num_frames, tubelet_size),
                                 ("img_size (height)", img_h, patch_size),
                                 ("img_size (width)", img_w, patch_size)):
            if size % step:
                raise ValueError(f"{name}={size} is not a multiple of the cube side {step}")
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.in_chans = in_chans
        self.grid_size = (num_frames // tubelet_size, img_h // patch_size, img_w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                              stride=(tubelet_size, patch_size, patch_size))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
        x = self.proj(video)                 # (B, D, T', H', W')
        return x.flatten(2).transpose(1, 2)  # (B, N, D), raster order (t, h, w)
