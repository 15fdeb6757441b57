"""Datasets and loaders from the config, and the global-batch sampler.

The sampler draws one permutation per epoch (from SEED and the epoch) and cuts it into global
batches of `batch x world x accum` videos; micro-step m of rank r takes chunk `m * world + r`.
The samples of a global batch therefore do not depend on how it is split into ranks and
accumulation steps, which is what lets a run resume on a different world size with the same
trajectory. Resuming mid-epoch skips the batches already consumed.

Every item goes out as an `ItemKey` (epoch, step, global row, index): the dataset seeds the item's
augmentation from it, so loader workers need no epoch state and persist for the whole run. One
sampler iteration runs across all epochs and `TrainLoader` hands the trainer one epoch of it at a
time, so workers keep prefetching over epoch boundaries (and through evaluation). A micro-batch
is cut into parts of about `batch / workers` items, one per worker task, so after a start all
workers decode the first batch together instead of one worker decoding it alone.
"""
from __future__ import annotations

import json
import os
import queue
import re
import threading
from typing import NamedTuple

import numpy as np
import torch

from ..data import AnnotationError, ClipConfig, FaultPolicy, VideoDataset, make_loader, read_video_list
from ..data.datasets import collate_clips, shut_down_on_exit, worker_init
from .distributed import use_cuda
from ..data.transforms import finetune_train_transform, pretrain_transform
from .config import ConfigError


class ItemKey(NamedTuple):
    """What a training item is: its position in the run and the video it reads."""
    epoch: int
    step: int     # optimizer step within the epoch
    row: int      # row of the global batch (0 .. batch x world x accum - 1)
    index: int    # video in the list


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields lists of `ItemKey`s: the parts (of `part_size` items) of this rank's micro-batches,
    in order, from (epoch, start_step) on through the last epoch (`epochs`; None: without end)."""

    def __init__(self, num_items: int, batch: int, world: int, rank: int, accum: int, seed: int,
                 epochs: int | None = None, part_size: int | None = None):
        self.num_items, self.batch, self.world, self.rank, self.accum = num_items, batch, world, rank, accum
        self.seed, self.epoch, self.start_step = seed, 0, 0
        self.epochs, self.part_size = epochs, part_size or batch
        self.global_batch = batch * world * accum
        if num_items < self.global_batch:
            raise ValueError(f"the training list has {num_items} videos, fewer than one global batch "
                             f"({batch} per process x {world} processes x {accum} accumulation steps)")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    @property
    def parts(self) -> int:
        """Parts per micro-batch."""
        return -(-self.batch // self.part_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Where the next iteration starts."""
        self.epoch, self.start_step = epoch, start_step

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def micro_batch(self, epoch: int, step: int, micro: int, order: np.ndarray | None = None) -> list[ItemKey]:
        """This rank's keys for micro-step `micro` of `step`: rows of chunk `micro * world + rank`."""
        order = self.order(epoch) if order is None else order
        base, first = step * self.global_batch, (micro * self.world + self.rank) * self.batch
        return [ItemKey(epoch, step, row, int(order[base + row])) for row in range(first, first + self.batch)]

    def __iter__(self):
        epoch, start = self.epoch, self.start_step
        while self.epochs is None or epoch < self.epochs:
            order = self.order(epoch)
            for step in range(start, self.steps_per_epoch):
                for micro in range(self.accum):
                    keys = self.micro_batch(epoch, step, micro, order)
                    for i in range(0, self.batch, self.part_size):
                        yield keys[i:i + self.part_size]
            epoch, start = epoch + 1, 0

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("the training sampler runs without end (epochs=None)")
        steps = (self.epochs - self.epoch) * self.steps_per_epoch - self.start_step
        return max(steps, 0) * self.accum * self.parts


def join_parts(parts: list[dict], pin: bool = False) -> dict:
    """One micro-batch from its parts (collated by the workers), in order; into pinned memory with
    `pin`, so the step's host-to-device copy runs asynchronously."""
    if len(parts) == 1 and not pin:
        return parts[0]
    out = {}
    for key, first in parts[0].items():
        values = [part[key] for part in parts]
        if isinstance(first, torch.Tensor):
            shape = (sum(v.shape[0] for v in values), *first.shape[1:])
            out[key] = torch.cat(values, out=torch.empty(shape, dtype=first.dtype, pin_memory=pin))
        else:
            out[key] = [x for v in values for x in v]
    return out


class _Error:
    def __init__(self, err: BaseException):
        self.err = err


class _Joiner(threading.Thread):
    """Pulls parts from the DataLoader's iterator and joins them into micro-batches while the
    main process runs the step (torch.cat releases the GIL); at most `depth` wait."""

    def __init__(self, iterator, parts: int, pin: bool, depth: int = 2):
        super().__init__(name="videomae-batch-joiner", daemon=True)
        self.iterator, self.parts, self.pin = iterator, parts, pin
        self.queue: queue.Queue = queue.Queue(depth)
        self.stopping = threading.Event()
        self.device = torch.cuda.current_device() if pin else None

    def run(self):
        if self.device is not None:  # pinned memory belongs to this rank's GPU, as in torch's pin thread
            torch.cuda.set_device(self.device)
        try:
            while not self.stopping.is_set():
                self._put(join_parts([next(self.iterator) for _ in range(self.parts)], self.pin))
        except StopIteration:
            self._put(StopIteration())
        except BaseException as err:  # noqa: BLE001 -- re-raised in the main thread
            if not self.stopping.is_set():
                self._put(_Error(err))

    def _put(self, value) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return
            except queue.Full:
                continue

    def __next__(self) -> dict:
        while True:
            try:
                value = self.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.is_alive():
                    raise RuntimeError("the batch joiner thread stopped without a batch or an error")
        if isinstance(value, StopIteration):
            raise value
        if isinstance(value, _Error):
            raise value.err
        return value

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)   # it may be waiting for one part from a worker


class TrainLoader:
    """The training batches of the whole run as one stream; `set_epoch(epoch, step)` places it
    (a new stream only where the position differs from where the stream is, i.e. at the start or
    after a resume), and iterating yields that epoch's remaining micro-batches."""

    def __init__(self, loader: torch.utils.data.DataLoader, sampler: GlobalBatchSampler, pin: bool):
        self.loader, self.sampler, self.pin = loader, sampler, pin
        self.epoch, self.step = 0, 0
        self._next: tuple[int, int, int] | None = None   # (epoch, step, micro) of the stream's next batch
        self._stream = None
        self._joiner: _Joiner | None = None

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        self.epoch, self.step = epoch, step

    def _start(self) -> None:
        self.close()
        self.sampler.set_epoch(self.epoch, self.step)
        self._stream = iter(self.loader)   # persistent workers: the same processes again
        if self.loader.num_workers > 0:
            self._joiner = _Joiner(self._stream, self.sampler.parts, self.pin)
            self._joiner.start()
        self._next = (self.epoch, self.step, 0)

    def _next_batch(self) -> dict:
        if self._joiner is not None:
            return next(self._joiner)
        return join_parts([next(self._stream) for _ in range(self.sampler.parts)], self.pin)

    def __iter__(self):
        if self._next != (self.epoch, self.step, 0):
            self._start()
        accum, steps = self.sampler.accum, self.sampler.steps_per_epoch
        for _ in range((steps - self.step) * accum):
            batch = self._next_batch()
            epoch, step, micro = self._next
            micro += 1
            if micro == accum:
                step, micro = step + 1, 0
                self.step = step
            if step == steps:
                epoch, step = epoch + 1, 0
            self._next = (epoch, step, micro)
            yield batch

    def close(self) -> None:
        """Stop the joiner thread (the persistent workers stay for a restart)."""
        if self._joiner is not None:
            self._joiner.stop()
            self._joiner = None
        self._stream, self._next = None, None

    def shutdown(self) -> None:
        """Stop the joiner and the worker processes."""
        self.close()
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None

    def __del__(self):
        # the joiner thread keeps the DataLoader's iterator (and so its workers) alive: a loader
        # dropped without shutdown() would leave workers that ignore SIGTERM for the exit to wait on
        try:
            self.shutdown()
        except Exception:  # noqa: BLE001 -- nothing to report to at garbage collection
            pass


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


def min_frames(cfg, split: str) -> int:
    """The fewest frames a video of `split` may have. Training: DATA.MIN_FRAMES, or when that is 0
    the clip's frame count MODEL.NUM_FRAMES -- so a still (1 frame) or a 3-frame file is a bad video,
    while a clip shorter than the dense span (NUM_FRAMES - 1) x SAMPLING_RATE + 1 is still used with
    its last frame repeated, as the published recipes do (SSv2 at rate 2 has such clips). Evaluation
    takes every video that decodes, as the published protocols do."""
    if split not in ("pretrain", "train"):
        return 1
    return cfg.DATA.MIN_FRAMES or cfg.MODEL.NUM_FRAMES


def build_dataset(cfg, split: str) -> VideoDataset:
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
                      num_repeats=cfg.DATA.NUM_REPEATS if split in ("pretrain", "train") else 1,
                      min_frames=min_frames(cfg, split))
    transform = None
    if split == "pretrain":
        transform = pretrain_transform(cfg.MODEL.IMG_SIZE, flip=cfg.DATA.FLIP)
    elif split == "train":
        probe = cfg.TASK == "linprobe"   # a linear probe trains on plain crops and flips only
        transform = finetune_train_transform(cfg.MODEL.IMG_SIZE, flip=cfg.DATA.FLIP,
                                             rand_augment=None if probe else cfg.DATA.RAND_AUGMENT or None,
                                             erasing=0.0 if probe else cfg.DATA.RANDOM_ERASING,
                                             scale=tuple(cfg.DATA.TRAIN_CROP_SCALE))
    # bad training videos are counted and judged over the whole run by the trainer (engine.bad_videos)
    return VideoDataset(records, split, clip, transform=transform, backend=cfg.DATA.BACKEND,
                        decode_short_side=cfg.DATA.DECODE_SHORT_SIDE or None, faults=FaultPolicy(), seed=cfg.SEED,
                        skip_bad=cfg.DATA.EVAL_SKIP_BAD and split in ("val", "test"),
                        motion=loader_motion_masks(cfg) if split == "pretrain" else None)


def loader_motion_masks(cfg):
    """MASK.TYPE motion: what the loader workers need to draw the masks (they see the pixels and
    the codec's motion vectors); None for every other strategy."""
    if cfg.MASK.TYPE != "motion":
        return None
    from ..masking.motion import LoaderMotionMasks, MotionMasking
    from ..models.factory import create_model

    named = re.search(r"_patch(\d+)_", cfg.MODEL.NAME)   # our names say it; a model of your own is asked
    patch = cfg.MODEL.PATCH_SIZE or (int(named.group(1)) if named else create_model(
        cfg.MODEL.NAME, num_frames=cfg.MODEL.NUM_FRAMES, img_size=cfg.MODEL.IMG_SIZE,
        tubelet_size=cfg.MODEL.TUBELET_SIZE, depth=1).patch_size)
    if cfg.MASK.MOTION_SOURCE == "mv" and cfg.DATA.BACKEND != "pyav":
        raise ConfigError(f"MASK.MOTION_SOURCE mv needs DATA.BACKEND pyav (the backend that exports motion "
                          f"vectors), got {cfg.DATA.BACKEND}; or use MASK.MOTION_SOURCE auto or diff")
    strategy = MotionMasking(cfg.MASK.RATIO, cfg.MASK.MOTION_TEMPERATURE, cfg.MASK.MOTION_TUBE)
    return LoaderMotionMasks(strategy, cfg.MODEL.TUBELET_SIZE, patch, cfg.SEED, cfg.MASK.MOTION_SOURCE)


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
    """(TrainLoader, sampler): persistent workers, each task a part of about batch / workers items,
    pinned micro-batches where CUDA is used."""
    batch, accum = cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.ACCUM_STEPS
    if len(dataset) < batch * world * accum:
        listed = dataset.records[0].where.rsplit(":", 1)[0] if dataset.records else "the training list"
        raise ConfigError(f"{listed} has {len(dataset)} videos, fewer than one global batch of {batch * world * accum} "
                          f"(TRAIN.BATCH_SIZE {batch} x {world} processes x TRAIN.ACCUM_STEPS {accum}); "
                          "lower TRAIN.BATCH_SIZE or TRAIN.ACCUM_STEPS")
    workers = cfg.DATA.NUM_WORKERS
    part_size = -(-batch // min(workers, batch)) if workers > 0 else batch
    sampler = GlobalBatchSampler(len(dataset), batch, world, rank, cfg.TRAIN.ACCUM_STEPS, cfg.SEED,
                                 epochs=cfg.TRAIN.EPOCHS, part_size=part_size)
    if getattr(dataset, "motion", None) is not None:   # items count steps per epoch, masks per run
        dataset.motion.steps_per_epoch = sampler.steps_per_epoch
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_clips,
        pin_memory=False, persistent_workers=workers > 0,   # pinning happens when the parts are joined
        timeout=cfg.DATA.LOADER_TIMEOUT if workers > 0 else 0, worker_init_fn=worker_init,
        prefetch_factor=4 if workers > 0 else None)
    return shut_down_on_exit(TrainLoader(loader, sampler, pin=use_cuda())), sampler


def build_eval_loader(cfg, dataset: VideoDataset, world: int, rank: int):
    """Every rank takes a contiguous, unpadded share: no view is evaluated twice."""
    n = len(dataset)
    share = [i for i in range(n) if i * world // n == rank]
    return make_loader(torch.utils.data.Subset(dataset, share), cfg.TRAIN.BATCH_SIZE, cfg.DATA.NUM_WORKERS, shuffle=False,
                       drop_last=False, timeout=cfg.DATA.LOADER_TIMEOUT)
