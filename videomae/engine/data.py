"""Datasets and loaders from the config, and the global-batch sampler.

The sampler draws one permutation per epoch (from SEED and the epoch) and cuts it into global
batches of `batch x world x accum` videos; micro-step m of rank r takes chunk `m * world + r`.
The samples of a global batch therefore do not depend on how it is split into ranks and
accumulation steps, which is what lets a run resume on a different world size with the same
trajectory. Resuming mid-epoch skips the batches already consumed.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..data import AnnotationError, ClipConfig, FaultPolicy, VideoDataset, make_loader, read_video_list
from ..data.datasets import collate_clips, worker_init
from ..data.transforms import finetune_train_transform, pretrain_transform
from .config import ConfigError


class GlobalBatchSampler(torch.utils.data.Sampler):
    def __init__(self, num_items: int, batch: int, world: int, rank: int, accum: int, seed: int):
        self.num_items, self.batch, self.world, self.rank, self.accum = num_items, batch, world, rank, accum
        self.seed, self.epoch, self.start_step = seed, 0, 0
        self.global_batch = batch * world * accum
        if num_items < self.global_batch:
            raise ValueError(f"the training list has {num_items} videos, fewer than one global batch "
                             f"({batch} per process x {world} processes x {accum} accumulation steps)")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        for step in range(self.start_step, self.steps_per_epoch):
            chunk = order[step * self.global_batch:(step + 1) * self.global_batch]
            for micro in range(self.accum):
                c = micro * self.world + self.rank
                yield chunk[c * self.batch:(c + 1) * self.batch].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


def list_path(cfg, name: str) -> str:
    return os.path.join(cfg.DATA.LIST_DIR, name) if cfg.DATA.LIST_DIR else name


def make_missing_demo_data(cfg, list_name: str) -> None:
    """`configs/demo/` run before `make demo`: write the synthetic demo set where the config
    expects it (a few seconds). Only a missing list in a synthetic config's own ROOT triggers it."""
    root = cfg.DATA.ROOT
    if cfg.DATA.DATASET != "synthetic" or not root or os.path.exists(list_path(cfg, list_name)):
        return
    if os.path.abspath(cfg.DATA.LIST_DIR or root) != os.path.abspath(root):
        return
    from ..data.synthetic import ensure_demo_dataset
    from .distributed import detect

    ensure_demo_dataset(root, is_main=detect().rank == 0)


def build_dataset(cfg, split: str, log_dir: str | None = None) -> VideoDataset:
    """split: pretrain | train | val | test."""
    list_name = {"pretrain": cfg.DATA.TRAIN_LIST, "train": cfg.DATA.TRAIN_LIST,
                 "val": cfg.DATA.VAL_LIST, "test": cfg.DATA.TEST_LIST}[split]
    make_missing_demo_data(cfg, list_name)
    num_classes = model_classes(cfg) if split != "pretrain" else None
    if num_classes:
        class_names(cfg, num_classes)   # a short classes.json fails now, not after the evaluation
    records = read_video_list(list_path(cfg, list_name), cfg.DATA.ROOT, fmt=cfg.DATA.LIST_FORMAT,
                              num_classes=num_classes, allow_unlabeled=split == "pretrain")
    sampling = "dense" if split == "pretrain" else cfg.DATA.FINETUNE_SAMPLING
    clip = ClipConfig(num_frames=cfg.MODEL.NUM_FRAMES, sampling=sampling, sampling_rate=cfg.DATA.SAMPLING_RATE,
                      img_size=cfg.MODEL.IMG_SIZE, num_clips=cfg.DATA.TEST_NUM_CLIPS,
                      num_crops=cfg.DATA.TEST_NUM_CROPS,
                      num_repeats=cfg.DATA.NUM_REPEATS if split in ("pretrain", "train") else 1)
    transform = None
    if split == "pretrain":
        transform = pretrain_transform(cfg.MODEL.IMG_SIZE, flip=cfg.DATA.FLIP)
    elif split == "train":
        transform = finetune_train_transform(cfg.MODEL.IMG_SIZE, flip=cfg.DATA.FLIP,
                                             rand_augment=cfg.DATA.RAND_AUGMENT or None,
                                             erasing=cfg.DATA.RANDOM_ERASING,
                                             scale=tuple(cfg.DATA.TRAIN_CROP_SCALE))
    faults = FaultPolicy(log_file=os.path.join(log_dir, "bad_videos.txt") if log_dir else None,
                         max_ratio=cfg.DATA.MAX_BAD_RATIO)
    return VideoDataset(records, split, clip, transform=transform, backend=cfg.DATA.BACKEND,
                        decode_short_side=cfg.DATA.DECODE_SHORT_SIDE or None, faults=faults, seed=cfg.SEED,
                        skip_bad=cfg.DATA.EVAL_SKIP_BAD and split in ("val", "test"))


def model_classes(cfg) -> int | None:
    """The number of classes a classification task's model has (MODEL.NUM_CLASSES, or
    DATA.NUM_CLASSES when that is 0): labels must be below it. None for pretraining configs."""
    if cfg.TASK == "pretrain":
        return None
    return cfg.MODEL.NUM_CLASSES or cfg.DATA.NUM_CLASSES or None


def class_names(cfg, num_classes: int | None = None) -> list[str] | None:
    """Names from `classes.json` (`{name: label}`) next to the lists, in label order, if there is
    one; it must name at least the model's `num_classes`."""
    path = os.path.join(cfg.DATA.LIST_DIR, "classes.json") if cfg.DATA.LIST_DIR else ""
    if not (path and os.path.exists(path)):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
        names = sorted(mapping, key=lambda k: int(mapping[k]))
    except (ValueError, TypeError, AttributeError) as err:
        raise AnnotationError(f"{path}: not a JSON object of class name -> label ({err})") from None
    if num_classes is not None and len(names) < num_classes:
        raise AnnotationError(f"{path} names {len(names)} classes but the model has {num_classes} "
                              "(MODEL.NUM_CLASSES, or DATA.NUM_CLASSES when that is 0)")
    return names


def build_train_loader(cfg, dataset: VideoDataset, world: int, rank: int):
    batch, accum = cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.ACCUM_STEPS
    if len(dataset) < batch * world * accum:
        listed = dataset.records[0].where.rsplit(":", 1)[0] if dataset.records else "the training list"
        raise ConfigError(f"{listed} has {len(dataset)} videos, fewer than one global batch of {batch * world * accum} "
                          f"(TRAIN.BATCH_SIZE {batch} x {world} processes x TRAIN.ACCUM_STEPS {accum}); "
                          "lower TRAIN.BATCH_SIZE or TRAIN.ACCUM_STEPS")
    sampler = GlobalBatchSampler(len(dataset), cfg.TRAIN.BATCH_SIZE, world, rank, cfg.TRAIN.ACCUM_STEPS, cfg.SEED)
    workers = cfg.DATA.NUM_WORKERS
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_clips,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        timeout=cfg.DATA.LOADER_TIMEOUT if workers > 0 else 0, worker_init_fn=worker_init,
        prefetch_factor=4 if workers > 0 else None)
    return loader, sampler


def build_eval_loader(cfg, dataset: VideoDataset, world: int, rank: int):
    """Every rank takes a contiguous, unpadded share: no view is evaluated twice."""
    n = len(dataset)
    share = [i for i in range(n) if i * world // n == rank]
    return make_loader(torch.utils.data.Subset(dataset, share), cfg.TRAIN.BATCH_SIZE, cfg.DATA.NUM_WORKERS, shuffle=False,
                       drop_last=False, timeout=cfg.DATA.LOADER_TIMEOUT)
