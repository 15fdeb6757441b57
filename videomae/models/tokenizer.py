"""Cube (tubelet) tokenizer: a video becomes a sequence of 3-D cube embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CubeProjection(nn.Conv3d):
    """The cube projection: a Conv3d whose stride equals its kernel, applied as the matmul it is.

    Called on flattened cubes (..., C*t*p*p) -- each in the weight's (c, dt, dy, dx) order -- it
    returns their embeddings (..., D), so only the cubes that are gathered get projected. The module
    stays an `nn.Conv3d` with the usual weight layout (D, C, t, p, p), so checkpoints, converters and
    official VideoMAE keys (`patch_embed.proj.weight`) are unchanged; being called as a module keeps
    wrappers that gather parameters per module on forward (ZeRO-3, FSDP) working.
    """

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        return F.linear(cubes, self.weight.flatten(1), self.bias)


class CubeEmbed(nn.Module):
    """Cube embedding with kernel = stride = (tubelet, p, p); tokens in raster order (t, h, w).

    `forward(video)` embeds every cube: (B, C, T, H, W) -> (B, N, D), N = T/tubelet * H/p * W/p.
    `forward(video, ids)` embeds only the cubes `ids` (B, n) -> (B, n, D): the rest of the video is
    never read, which is what makes a 90%-masked encoder pay for 10% of the embedding.
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
        self.proj = CubeProjection(in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
                                   stride=(tubelet_size, patch_size, patch_size))

    def cubes(self, video: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, C*t*p*p) flattened cubes in raster order, or those at `ids` (B, n)."""
        if video.ndim != 5:
            raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
        B, C, T, H, W = video.shape
        t, p = self.tubelet_size, self.patch_size
        gt, gh, gw = T // t, H // p, W // p
        # a view: (B, T', H', W', C, t, p, p); indexing it reads only the chosen cubes
        x = video.reshape(B, C, gt, t, gh, p, gw, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        if ids is None:
            return x.reshape(B, gt * gh * gw, C * t * p * p)
        batch = torch.arange(B, device=ids.device)[:, None]
        x = x[batch, ids // (gh * gw), (ids // gw) % gh, ids % gw]   # (B, n, C, t, p, p)
        return x.reshape(B, ids.shape[1], C * t * p * p)

    def forward(self, video: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.cubes(video, ids))  # (B, n, D)
