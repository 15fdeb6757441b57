"""Held-out masked-cube loss under a common mask: the one definition that pretraining's validation
pass (every TRAIN.EVAL_PERIOD epochs) and the masking comparison's `recon` both use.

The common mask is random masking at the run's MASK.RATIO, drawn per validation item from
(COMMON_MASK_SEED, item) through the seeding protocol (`videomae/seeding.py`): every strategy, seed,
world size and batch split scores the same masks, so the numbers compare across runs whose own
masks (and so train losses) measure different tasks. With dual masking the decoder reconstructs
every masked cube here (no decoder mask).

The view: the centre clip sampled as pretraining samples (dense, DATA.SAMPLING_RATE), the centre
crop, no augmentation; the model in eval mode (no drop path), fp32, without gradients.
"""
from __future__ import annotations

import numpy as np
import torch

from ..masking import build_masking
from ..seeding import RowGenerator

COMMON_MASK_SEED = 0        # the common mask's key: the same for every run and every comparison


def eval_config(cfg, list_name: str, skip_bad: bool = False):
    """`cfg` for one view per video of `list_name`: the centre clip sampled as pretraining samples
    (dense), centre crop; `skip_bad` False: every video required (a bad one is an error naming its
    list line)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATA.VAL_LIST = list_name
    cfg.DATA.FINETUNE_SAMPLING = "dense"
    cfg.DATA.EVAL_SKIP_BAD = skip_bad
    cfg.freeze()
    return cfg


def item_masks(strategy, indices: torch.Tensor, grid, device, video=None, model=None) -> torch.Tensor:
    """Masks for validation items `indices`, each a function of (COMMON_MASK_SEED, item) only --
    and, for a strategy that scores the pixels (motion masking), of the items' uint8 `video`: its
    frame differences (the validation loader decodes no motion vectors)."""
    gen = RowGenerator(COMMON_MASK_SEED, 0, indices.to(torch.int64), "mask", device)
    if video is not None and hasattr(strategy, "from_scores"):
        from ..masking.motion import batch_frame_difference_scores

        scores = batch_frame_difference_scores(video, model.tubelet_size, model.patch_size)
        return strategy.from_scores(scores, gen, grid)
    return strategy.draw_rows(gen, grid)


@torch.no_grad()
def loss_sums(model, batches, strategies: dict, device) -> tuple[dict, int]:
    """({name: sum over clips of the clip's masked-cube loss under `strategies[name]`}, clips).
    Every row of a strategy's mask hides as many cubes, so batch mean x batch size is the sum of
    the clips' losses. Batches without video (all skipped as bad) are passed over."""
    from .tasks import normalize_on_device

    grid = tuple(model.grid_size)
    was_training = model.training
    model.eval()
    sums, clips = dict.fromkeys(strategies, 0.0), 0
    dtype = next(model.parameters()).dtype   # fp16 weights under DeepSpeed fp16; else fp32
    try:
        for batch in batches:
            if "video" not in batch:
                continue
            video = normalize_on_device(batch["video"], device).to(dtype)
            for key, strategy in strategies.items():
                mask = item_masks(strategy, batch["index"], grid, device, batch["video"], model)
                sums[key] += float(model(video, mask).loss) * video.shape[0]
            clips += video.shape[0]
    finally:
        model.train(was_training)
    return sums, clips


def common_strategy(ratio: float):
    return build_masking("random", ratio)


def spread_subset(n: int, limit: int) -> list[int]:
    """`limit` items evenly spread over 0..n-1 (all of them when limit >= n): lists are often
    sorted by class, so the first `limit` would be a few classes only."""
    if limit >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


class PretrainValidation:
    """The common-mask loss on (up to TRAIN.VAL_VIDEOS of) the validation list, for the trainer.
    Each rank scores a contiguous share; the sums are added over ranks, so the number does not
    depend on the world size."""

    def __init__(self, cfg, world: int, rank: int):
        from .data import build_dataset, build_eval_loader

        self.cfg = eval_config(cfg, cfg.DATA.VAL_LIST, skip_bad=cfg.DATA.EVAL_SKIP_BAD)
        dataset = build_dataset(self.cfg, "val")
        self.items = spread_subset(len(dataset), cfg.TRAIN.VAL_VIDEOS)
        self.videos = len(self.items)
        subset = dataset if self.videos == len(dataset) else torch.utils.data.Subset(dataset, self.items)
        self.loader = build_eval_loader(self.cfg, subset, world, rank)
        self.world, self.rank = world, rank
        self.strategy = common_strategy(cfg.MASK.RATIO)
        # ZeRO-3 gathers parameters inside forward: every rank must run as many forwards
        share = lambda r: sum(1 for i in range(self.videos) if i * world // self.videos == r)  # noqa: E731
        batch = cfg.TRAIN.BATCH_SIZE
        self.max_batches = max(-(-share(r) // batch) for r in range(world))
        self.pad_forwards = cfg.DEEPSPEED.ZERO_STAGE == 3 and world > 1

    def __call__(self, model, device) -> dict:
        batches = list(self.loader) if self.pad_forwards else self.loader
        sums, clips = loss_sums(model, batches, {"recon_common": self.strategy}, device)
        if self.pad_forwards:
            for _ in range(self.max_batches - len(batches)):   # results discarded
                loss_sums(model, batches[-1:] or [], {"pad": self.strategy}, device)
        total = torch.tensor([sums["recon_common"], clips], dtype=torch.float64, device=device)
        if self.world > 1:
            torch.distributed.all_reduce(total)
        loss, clips = total.tolist()
        if clips == 0:
            raise RuntimeError(f"validation: none of the {self.videos} videos loaded; is DATA.ROOT right?")
        return {"recon_common": loss / clips, "videos": int(clips)}
