"""What the one training loop trains. A task builds the model and its parameter groups, turns a
batch into a loss, and (for classification) evaluates. Pretraining lives here; fine-tuning and
linear probing plug in the same way."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..masking import build_masking, validate_mask
from ..masking.motion import masking_kwargs
from ..models.factory import create_model
from ..models.targets import IMAGENET_MEAN, IMAGENET_STD
from ..seeding import RowGenerator
from .optim import param_groups


@dataclass
class StepContext:
    step: int          # optimizer step this micro-batch belongs to
    micro: int         # accumulation index within the step
    rank: int
    world: int
    accum: int
    seed: int
    validate: bool = False  # check the drawn masks against the contract (the loop sets it on log steps)

    def first_row(self, batch_size: int) -> int:
        """Global row of this micro-batch's first clip: the sampler gives micro-step m of rank r
        chunk `m * world + r` of the step's global batch."""
        return (self.micro * self.world + self.rank) * batch_size

    def rows(self, batch_size: int, stream: str, device=None) -> RowGenerator:
        """The per-row generator of this micro-batch's global rows for one random stream."""
        return RowGenerator.for_range(self.seed, self.step, self.first_row(batch_size), batch_size,
                                      stream, device)


def drop_path_noise(model, ctx: StepContext, batch_size: int, device) -> torch.Tensor | None:
    """Per-sample drop-path draws (B, model.random_draws) from (SEED, step, global row), or None
    when the model has no drop path."""
    draws = model.random_draws
    return ctx.rows(batch_size, "drop_path", device).uniform(draws) if draws else None


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
    if m.CLS_TOKEN:   # only when asked: a model of your own (IMPORTS) need not know the argument
        kwargs["cls_token"] = True
    kwargs.update({k: v for k, v in (("patch_size", m.PATCH_SIZE), ("depth", m.DEPTH)) if v})
    return kwargs


class PretrainTask:
    name = "pretrain"
    train_split = "pretrain"
    has_eval = False    # build_model turns it on when there is a validation list (TRAIN.VAL_VIDEOS > 0)

    def __init__(self, cfg):
        self.cfg = cfg
        self.log = print  # the trainer hands in its logger
        self.mask = build_masking(cfg.MASK.TYPE, cfg.MASK.RATIO, **masking_kwargs(cfg))
        self.decoder_mask = build_masking(cfg.MASK.DECODER_TYPE, cfg.MASK.DECODER_RATIO) \
            if cfg.MASK.DECODER_TYPE else None
        self._validated = False  # masks are checked on the first step, then when ctx.validate says
        self._validation = None
        self._motion_logged = False

    def build_model(self) -> torch.nn.Module:
        from ..models.factory import MODELS
        from ..targets import target_from_config

        m = self.cfg.MODEL
        target = target_from_config(self.cfg)
        kwargs = model_kwargs(self.cfg)
        kwargs.update({k: v for k, v in (("decoder_embed_dim", m.DECODER_DIM), ("decoder_num_heads", m.DECODER_HEADS),
                                         ("decoder_mlp_ratio", m.DECODER_MLP_RATIO)) if v})   # 0: the size's
        if m.NAME in MODELS or target.name not in ("pixel", "pixel_raw"):
            kwargs["target"] = target   # a timm model of your own gets it only when it must
        model = create_model(m.NAME, decoder_depth=m.DECODER_DEPTH, norm_target=target.name != "pixel_raw",
                             **kwargs)
        if not hasattr(model, "decoder"):
            raise ValueError(f"MODEL.NAME={m.NAME} is not a pretraining model; use a "
                             "pretrain_videomae_* name for TASK pretrain")
        if m.PRETRAINED:  # continue pretraining, e.g. from official weights on a new dataset
            from ..convert import load_checkpoint
            self.log(str(load_checkpoint(model, m.PRETRAINED)))
        self.log(self.describe_masking(tuple(model.grid_size)))
        enc = getattr(getattr(model, "cfg", None), "encoder", None)
        width = f", {target.width(enc)} values per token" if enc is not None else ""
        self.log(f"target: {target.name}{width} ({target!r})")
        self.has_eval = self._validation_wanted()
        return model

    def _validation_wanted(self) -> bool:
        """On when TRAIN.VAL_VIDEOS > 0 and DATA.VAL_LIST exists; a missing list says so once."""
        import os

        from .data import list_path

        if self.cfg.TRAIN.VAL_VIDEOS <= 0:
            return False
        path = list_path(self.cfg, self.cfg.DATA.VAL_LIST)
        if not os.path.isfile(path):
            self.log(f"validation: off, no validation list at {path} (TRAIN.VAL_VIDEOS 0 silences this)")
            return False
        self.log(f"validation: masked-cube loss under the common mask (random {self.cfg.MASK.RATIO:g}) on up to "
                 f"{self.cfg.TRAIN.VAL_VIDEOS} videos of {path}, every {self.cfg.TRAIN.EVAL_PERIOD} epoch(s)")
        return True

    def evaluate(self, trainer, split: str = "val") -> dict:
        """The common-mask loss on the validation list (videomae/engine/reconstruction.py): the
        same number tools/compare_masking.py reports as recon_common for these weights."""
        from .reconstruction import PretrainValidation

        if self._validation is None:   # built once: the loader's workers persist between passes
            self._validation = PretrainValidation(self.cfg, trainer.info.world_size, trainer.info.rank)
        return self._validation(trainer.engine.module, trainer.device)

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

    def masks(self, model, clips_per_micro: int, ctx: StepContext, device, loaded=None):
        """Masks of this micro-batch's own global rows, per the seeding protocol: each row's mask
        depends on (SEED, step, row) only, so a rank draws O(local batch) whatever the world size.

        Returns (mask, decoder_mask, num_masked, num_decoder_masked); the counts come from the
        strategy (no device read) or, for a strategy that does not state one, from the mask. Masks
        are validated on the first call and whenever `ctx.validate` is set. `loaded`: encoder masks
        the loader drew (MASK.TYPE motion: they need the pixels), used instead of drawing."""
        grid = tuple(model.grid_size)
        check = ctx.validate or not self._validated
        out = []
        for strategy, stream in ((self.mask, "mask"), (self.decoder_mask, "decoder_mask")):
            if strategy is None:
                out += [None, None]
                continue
            if stream == "mask" and loaded is not None:   # drawn by the loader (motion masking)
                mask = loaded.to(device, non_blocking=True)
            else:
                mask = strategy.draw_rows(ctx.rows(clips_per_micro, stream, device), grid)
            count = strategy.known_count(grid)
            if check or count is None:
                name = f"{stream} from masking strategy {strategy.name!r}"
                count = validate_mask(mask, grid, name=name, expected=count)
            out += [mask, count]
        self._validated = True
        mask, count, decoder_mask, decoder_count = out
        return mask, decoder_mask, count, decoder_count

    def train_step(self, engine, batch: dict, ctx: StepContext):
        model = engine.module
        video = normalize_on_device(batch["video"], engine.device)
        loaded = batch.get("mask")
        if loaded is None and self.cfg.MASK.TYPE == "motion":
            raise ValueError("MASK.TYPE motion needs masks from the training loader (batch['mask']); "
                             "this batch has none")
        if "motion_source" in batch and not self._motion_logged:
            sources = batch["motion_source"]
            self.log(f"motion masks: {sources.count('mv')} of {len(sources)} videos of the first batch scored by "
                     f"codec motion vectors, {sources.count('diff')} by frame differences")
            self._motion_logged = True
        mask, decoder_mask, count, decoder_count = self.masks(model, video.shape[0], ctx, engine.device, loaded)
        noise = drop_path_noise(model, ctx, video.shape[0], engine.device)
        out = engine(video, mask, decoder_mask=decoder_mask, num_masked=count,
                     num_decoder_masked=decoder_count, drop_noise=noise)
        return out.loss, {}
