"""Clip transforms on uint8 tensors (T, C, H, W). Each transform draws its random parameters once
per clip, so every frame of a clip gets the same crop, flip, augmentation ops and erased box."""
from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ..models.targets import IMAGENET_MEAN, IMAGENET_STD


def _rand(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class Compose:
    def __init__(self, transforms):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        for transform in self.transforms:
            frames = transform(frames, rng)
        return frames

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


def resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 frames; equals PIL's BILINEAR (official VideoMAE's
    transforms) to the bit. Frames decoded as (T, H, W, C) and permuted stay channels-last in
    memory, where torch's native uint8 kernel is ~10x faster than a float round trip."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)


class ShortSideResize:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, frames, rng=None):
        h, w = frames.shape[-2:]
        if min(h, w) == self.size:
            return frames
        if h <= w:
            return resize(frames, (self.size, max(1, round(w * self.size / h))))
        return resize(frames, (max(1, round(h * self.size / w)), self.size))

    def __repr__(self):
        return f"ShortSideResize({self.size})"


class CenterCrop:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, frames, rng=None):
        return TF.center_crop(frames, [self.size, self.size])

    def __repr__(self):
        return f"CenterCrop({self.size})"


class ThreeCrop:
    """Test-time crop `index` (0, 1, 2) of three square crops spread along the long side."""

    def __init__(self, size: int, index: int):
        if index not in (0, 1, 2):
            raise ValueError(f"three-crop index must be 0, 1 or 2, got {index}")
        self.size, self.index = size, index

    def __call__(self, frames, rng=None):
        h, w = frames.shape[-2:]
        s = self.size
        if w >= h:
            x = (w - s) * self.index // 2
            y = (h - s) // 2
        else:
            x = (w - s) // 2
            y = (h - s) * self.index // 2
        return frames[..., y:y + s, x:x + s]

    def __repr__(self):
        return f"ThreeCrop({self.size}, index={self.index})"


class MultiScaleCrop:
    """VideoMAE pretraining crop: a crop side from `scales` x the short side for each of height and
    width (at most `max_distort` scale steps apart), placed at one of 13 fixed offsets, then resized
    to `size`."""

    def __init__(self, size: int, scales=(1, 0.875, 0.75, 0.66), max_distort: int = 1):
        self.size, self.scales, self.max_distort = size, tuple(scales), max_distort

    def params(self, h: int, w: int, rng) -> tuple[int, int, int, int]:
        base = min(h, w)
        sizes = [int(base * s) for s in self.scales]
        sizes = [self.size if abs(s - self.size) < 3 else s for s in sizes]
        pairs = [(cw, ch) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes)
                 if abs(i - j) <= self.max_distort]
        cw, ch = pairs[rng.integers(len(pairs))]
        ws, hs = (w - cw) // 4, (h - ch) // 4
        offsets = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0),
                   (1, 1), (3, 1), (1, 3), (3, 3)]
        ox, oy = offsets[rng.integers(len(offsets))]
        return oy * hs, ox * ws, ch, cw

    def __call__(self, frames, rng=None):
        top, left, ch, cw = self.params(*frames.shape[-2:], _rand(rng))
        return resize(frames[..., top:top + ch, left:left + cw], (self.size, self.size))

    def __repr__(self):
        return f"MultiScaleCrop({self.size}, scales={self.scales})"


class RandomResizedCrop:
    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def params(self, h, w, rng):
        area = h * w
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
        side = min(h, w)  # fallback: the central square
        return (h - side) // 2, (w - side) // 2, side, side

    def __call__(self, frames, rng=None):
        top, left, ch, cw = self.params(*frames.shape[-2:], _rand(rng))
        return resize(frames[..., top:top + ch, left:left + cw], (self.size, self.size))

    def __repr__(self):
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class HorizontalFlip:
    """Off for SSv2: its labels say 'left' and 'right'."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, frames, rng=None):
        return frames.flip(-1) if _rand(rng).random() < self.p else frames

    def __repr__(self):
        return f"HorizontalFlip(p={self.p})"


class RandAugment:
    """timm's RandAugment policy strings (e.g. `rand-m7-n4-mstd0.5-inc1`), with the same ops and
    magnitudes for every frame: timm draws them from Python's and NumPy's global generators, so
    both are re-seeded identically before each frame."""

    def __init__(self, policy: str, img_size: int = 224):
        from timm.data.auto_augment import rand_augment_transform

        hparams = dict(translate_const=int(img_size * 0.45),
                       img_mean=tuple(round(255 * m) for m in IMAGENET_MEAN))
        self.policy = policy
        self.transform = rand_augment_transform(policy, hparams)

    def __call__(self, frames, rng=None):
        from PIL import Image

        seed = int(_rand(rng).integers(2**31))
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            out = []
            for frame in frames.permute(0, 2, 3, 1).numpy():
                random.seed(seed)
                np.random.seed(seed)
                out.append(np.asarray(self.transform(Image.fromarray(frame))))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()

    def __repr__(self):
        return f"RandAugment({self.policy!r})"


class RandomErasing:
    """One box through all frames (area `scale` of the frame, aspect `ratio`), filled with noise
    that is N(0, 1) after ImageNet normalization ("pixel" mode), drawn anew for each frame."""

    def __init__(self, p: float = 0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3)):
        self.p, self.scale, self.ratio = p, tuple(scale), tuple(ratio)

    def __call__(self, frames, rng=None):
        rng = _rand(rng)
        if rng.random() >= self.p:
            return frames
        t, c, h, w = frames.shape
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < bh < h and 0 < bw < w:
                top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
                mean = np.array(IMAGENET_MEAN)[None, :, None, None]
                std = np.array(IMAGENET_STD)[None, :, None, None]
                noise = (mean + std * rng.standard_normal((t, c, bh, bw))) * 255
                frames = frames.clone()
                frames[:, :, top:top + bh, left:left + bw] = torch.from_numpy(
                    np.clip(np.rint(noise), 0, 255).astype(np.uint8))
                return frames
        return frames

    def __repr__(self):
        return f"RandomErasing(p={self.p})"


def pretrain_transform(size: int, flip: bool = False) -> Compose:
    return Compose([MultiScaleCrop(size), HorizontalFlip() if flip else None])


def finetune_train_transform(size: int, flip: bool = True, rand_augment: str | None = "rand-m7-n4-mstd0.5-inc1",
                             erasing: float = 0.25, scale=(0.08, 1.0)) -> Compose:
    return Compose([RandAugment(rand_augment, size) if rand_augment else None,
                    RandomResizedCrop(size, scale=scale),
                    HorizontalFlip() if flip else None,
                    RandomErasing(erasing) if erasing > 0 else None])


def eval_transform(size: int, crop_index: int | None = None, num_crops: int = 1) -> Compose:
    """Short side to `size`, then the centre crop (num_crops 1) or crop `crop_index` of three."""
    crop = CenterCrop(size) if num_crops == 1 else ThreeCrop(size, crop_index or 0)
    return Compose([ShortSideResize(size), crop])
