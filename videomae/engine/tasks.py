"""What the one training loop trains. A task builds the model and its parameter groups, turns a
batch into a loss, and (for classification) evaluates. Pretraining lives here; fine-tuning and
linear probing plug in the same way."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import timm
import torch

from ..masking import build_masking
from ..models.targets import IMAGENET_MEAN, IMAGENET_STD
from .optim import param_groups


@dataclass
class StepContext:
    step: int          # optimizer step this micro-batch belongs to
    micro: int         # accumulation index within the step
    rank: int
    world: int
    accum: int
    seed: int


@functools.lru_cache(maxsize=None)
def _normalization(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std on the device, made once: no host-to-device copy per step."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, -1, 1, 1, 1)
    return mean, std


def normalize_on_device(video: torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, C, T, H, W) from the loader -> float32 ImageNet-normalized, on the device."""
    video = video.to(device, non_blocking=True).float().div_(255.0)
    mean, std = _normalization(torch.device(device))
    return video.sub_(mean).div_(std)


def model_kwargs(cfg) -> dict:
    """Factory arguments every task takes from MODEL.*; PATCH_SIZE / DEPTH 0 keep the size's own."""
    m = cfg.MODEL
    kwargs = dict(num_frames=m.NUM_FRAMES, img_size=m.IMG_SIZE, tubelet_size=m.TUBELET_SIZE,
                  drop_path_rate=m.DROP_PATH, pos_embed=m.POS_EMBED)
    kwargs.update({k: v for k, v in (("patch_size", m.PATCH_SIZE), ("depth", m.DEPTH)) if v})
    return kwargs


class PretrainTask:
    name = "pretrain"
    train_split = "pretrain"
    has_eval = False

    def __init__(self, cfg):
        self.cfg = cfg
        self.log = print  # the trainer hands in its logger
        self.mask = build_masking(cfg.MASK.TYPE, cfg.MASK.RATIO)
        self.decoder_mask = build_masking(cfg.MASK.DECODER_TYPE, cfg.MASK.DECODER_RATIO) \
            if cfg.MASK.DECODER_TYPE else None

    def build_model(self) -> torch.nn.Module:
        m = self.cfg.MODEL
        model = timm.create_model(m.NAME, decoder_depth=m.DECODER_DEPTH, norm_target=m.NORM_TARGET,
                                  **model_kwargs(self.cfg))
        if not hasattr(model, "decoder"):
            raise ValueError(f"MODEL.NAME={m.NAME} is not a pretraining model; use a "
                             "pretrain_videomae_* name for TASK pretrain")
        if m.PRETRAINED:  # continue pretraining, e.g. from official weights on a new dataset
            from ..convert import load_checkpoint
            self.log(str(load_checkpoint(model, m.PRETRAINED)))
        self.log(self.describe_masking(tuple(model.grid_size)))
        return model

    def describe_masking(self, grid) -> str:
        """Counted on a drawn mask, so a strategy of your own is described by what it does."""
        def count(strategy):
            return int(strategy(1, grid, generator=torch.Generator().manual_seed(0)).sum())

        line = (f"masking: {self.mask.name} {self.cfg.MASK.RATIO:g} -> {count(self.mask)} of {math.prod(grid)} "
                f"cubes masked per clip (grid {'x'.join(map(str, grid))})")
        if self.decoder_mask is not None:
            line += (f"; decoder: {self.decoder_mask.name} {self.cfg.MASK.DECODER_RATIO:g} -> "
                     f"{count(self.decoder_mask)} not reconstructed")
        return line

    def param_groups(self, model):
        return param_groups(model, self.cfg.TRAIN.WEIGHT_DECAY)

    def flop_inputs(self, model, device) -> tuple[tuple, dict]:
        """One clip and its mask at the run's ratios, for counting the model's FLOPs."""
        m = self.cfg.MODEL
        video = torch.zeros(1, 3, m.NUM_FRAMES, m.IMG_SIZE, m.IMG_SIZE, device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        mask = self.mask(1, model.grid_size, device=device, generator=generator)
        decoder_mask = self.decoder_mask(1, model.grid_size, device=device, generator=generator) \
            if self.decoder_mask is not None else None
        return (video, mask), {"decoder_mask": decoder_mask}

    def masks(self, model, clips_per_micro: int, ctx: StepContext, device):
        """Masks for this micro-batch, cut from the masks of the whole global batch: one generator
        per optimizer step, so a sample's mask does not depend on the world size. The global
        masks are drawn once per step and reused by its accumulation micro-steps."""
        total = clips_per_micro * ctx.world * ctx.accum
        key = (ctx.step, total, tuple(model.grid_size))
        if getattr(self, "_mask_key", None) != key:
            generator = torch.Generator(device=device).manual_seed(ctx.seed * 1_000_003 + ctx.step)
            mask = self.mask(total, model.grid_size, device=device, generator=generator)
            decoder_mask = None
            if self.decoder_mask is not None:
                decoder_mask = self.decoder_mask(total, model.grid_size, device=device, generator=generator)
            self._mask_key, self._masks = key, (mask, decoder_mask)
        chunk = ctx.micro * ctx.world + ctx.rank
        rows = slice(chunk * clips_per_micro, (chunk + 1) * clips_per_micro)
        mask, decoder_mask = self._masks
        return mask[rows], (decoder_mask[rows] if decoder_mask is not None else None)

    def train_step(self, engine, batch: dict, ctx: StepContext):
        model = engine.module
        video = normalize_on_device(batch["video"], engine.device)
        mask, decoder_mask = self.masks(model, video.shape[0], ctx, engine.device)
        out = engine(video, mask, decoder_mask=decoder_mask)
        return out.loss, {}
