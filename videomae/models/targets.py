"""Reconstruction targets and the masked MSE loss (the official VideoMAE definition)."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def unnormalize(video: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(B, C, T, H, W) normalized video back to [0, 1] pixels, in float32."""
    shape = (1, -1, 1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=video.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=video.device).view(shape)
    return video.float() * std_t + mean_t


def patchify(pixels: torch.Tensor, tubelet_size: int, patch_size: int,
             ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, tubelet*p*p, C): tokens in raster order (t, h, w), the pixels of
    each cube in (dt, dy, dx) order with channel last. With `ids` (B, M), only those tokens."""
    B, C, T, H, W = pixels.shape
    t, p = tubelet_size, patch_size
    gt, gh, gw = T // t, H // p, W // p
    x = pixels.reshape(B, C, gt, t, gh, p, gw, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, T', H', W', dt, dy, dx, C
    if ids is None:
        return x.reshape(B, gt * gh * gw, t * p * p, C)
    batch = torch.arange(B, device=ids.device)[:, None]
    return x[batch, ids // (gh * gw), (ids // gw) % gh, ids % gw].reshape(B, ids.shape[1], t * p * p, C)


def unpatchify(cubes: torch.Tensor, grid, tubelet_size: int, patch_size: int, channels: int = 3):
    """Inverse of `patchify` for a full (B, N, tubelet*p*p*C) tensor -> (B, C, T, H, W)."""
    B = cubes.shape[0]
    gt, gh, gw = grid
    t, p = tubelet_size, patch_size
    x = cubes.reshape(B, gt, gh, gw, t, p, p, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, C, T', dt, H', dy, W', dx
    return x.reshape(B, channels, gt * t, gh * p, gw * p)


def cube_targets(video: torch.Tensor, tubelet_size: int, patch_size: int,
                 normalize: bool = True, eps: float = 1e-6, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Targets for every token, or for the tokens `ids` (B, M): (B, M, tubelet*p*p*C), float32.

    With `normalize`, each cube is normalized per channel by its own mean and unbiased std,
    `(x - mean) / (std + eps)`; otherwise the targets are the [0, 1] pixels.
    """
    cubes = patchify(video.float(), tubelet_size, patch_size, ids)  # B, M, P, C (still normalized)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=video.device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=video.device)
    cubes = cubes * std + mean  # un-normalize to [0, 1]; channel is the last dim here
    if normalize:
        mean = cubes.mean(dim=-2, keepdim=True)
        std = cubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        cubes = (cubes - mean) / (std + eps)
    return cubes.flatten(2)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None):
    """Mean squared error over predicted tokens; `weight` (B, M) selects which of them count
    (the decoder-masking case, where only encoder-masked tokens are scored)."""
    err = (pred.float() - target.float()).pow(2)
    if weight is None:
        return err.mean() if err.numel() else err.sum()
    per_token = err.mean(dim=-1)
    return (per_token * weight).sum() / weight.sum().clamp(min=1)
