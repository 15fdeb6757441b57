"""Video datasets for pretraining and classification, with repeated sampling and fault tolerance.

Items are dicts: `video` uint8 (C, T, H, W) -- or (K, C, T, H, W) with `num_repeats` K > 1 --,
`label`, `index`; test items also carry `clip_index` and `crop_index` (every view of a video is
one item, ordered video-major). `collate_clips` flattens repeated clips into the batch.

Bad videos in training. Only a `VideoDecodeError` makes a video bad: a file no backend decodes,
or one with fewer frames than `ClipConfig.min_frames` (`VideoTooShort`: stills, 3-frame clips).
The item is then read from a random other video (at most `FaultPolicy.max_retries` in a row), and
it carries what happened as `load_failures`, a list of (index, reason): the worker does no
counting of its own. `collate_clips` turns that into two batch entries, `loads` (a list of load
attempts per collated part) and `load_failures`, so the counts travel with the batch to the main
process, which keeps them for the whole run over every worker and rank
(`videomae.engine.bad_videos`). Any other exception while loading is a bug and propagates with
its traceback. Evaluation never substitutes a video (`EvalVideoError`, or a `bad` entry with
`skip_bad`).
"""
from __future__ import annotations

import atexit
import copy
import os
import signal
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .annotations import VideoRecord
from .decoding import FrameFolderReader, VideoDecodeError, open_video, require_frames
from .sampling import dense_clip, dense_test_clips, segment_clip
from .transforms import eval_transform, finetune_train_transform, pretrain_transform

MODES = ("pretrain", "train", "val", "test")


class TooManyBadVideos(RuntimeError):
    """Training stops: too many videos failed to load (see `videomae.engine.bad_videos`)."""


class EvalVideoError(VideoDecodeError):
    """A val/test video failed to load, named by split and list file:line: evaluation never
    substitutes another video."""


@dataclass
class ClipConfig:
    num_frames: int = 16
    sampling: str = "dense"        # "dense" (K400, pretraining) or "segment" (TSN, SSv2 fine-tuning)
    sampling_rate: int = 4         # dense only: K400 4, SSv2 2
    img_size: int = 224
    num_clips: int = 1             # test views: clips x crops
    num_crops: int = 1
    num_repeats: int = 1           # augmented copies of one decoded clip (MAE-ST repeat_aug)
    short_videos: str = "clamp"    # or "loop"
    min_frames: int = 1            # fewer frames makes a video bad (VideoTooShort)


@dataclass
class FaultPolicy:
    """Training only: a bad video is replaced by a random other one, at most `max_retries` times in
    a row (more means the data root is wrong, not that a few files are bad). Whether the run goes
    on is decided in the main process over the whole run, not here."""
    max_retries: int = 10


def channels_first(clips: list[torch.Tensor]) -> torch.Tensor:
    """(K, C, T, H, W) contiguous from K (T, C, H, W) clips in any memory layout (the transforms
    leave them channels-last, as decoded). For uint8 this goes through NumPy: its strided copy does
    this transpose ~4x faster than torch's (1.2 vs 4.8 ms for 16x224x224 on one thread), writing
    straight into the stacked result, which saves the separate copy of `torch.stack`."""
    t, c, h, w = clips[0].shape
    if clips[0].dtype != torch.uint8:
        return torch.stack([clip.permute(1, 0, 2, 3) for clip in clips])
    out = np.empty((len(clips), c, t, h, w), dtype=np.uint8)
    for k, clip in enumerate(clips):
        out[k] = clip.numpy().transpose(1, 0, 2, 3)
    return torch.from_numpy(out)


class VideoDataset(Dataset):
    def __init__(self, records: list[VideoRecord], mode: str, clip: ClipConfig | None = None,
                 transform=None, backend: str = "decord", decode_short_side: int | None = None,
                 faults: FaultPolicy | None = None, seed: int = 0, skip_bad: bool = False, motion=None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.records, self.mode = records, mode
        self.clip = clip or ClipConfig()
        if self.clip.sampling not in ("dense", "segment"):
            raise ValueError(f"sampling must be 'dense' or 'segment', got {self.clip.sampling!r}")
        self.backend, self.decode_short_side = backend, decode_short_side
        self.faults = faults or FaultPolicy()
        self.seed, self.epoch = seed, 0
        self.skip_bad = skip_bad   # evaluation: hand out a "bad" item instead of raising
        self.motion = motion       # training: a LoaderMotionMasks draws motion-guided masks per item
        if transform is None:
            size = self.clip.img_size
            transform = {"pretrain": lambda: pretrain_transform(size),
                         "train": lambda: finetune_train_transform(size),
                         "val": lambda: eval_transform(size),
                         "test": lambda: None}[mode]()
        self.transform = transform
        self._test_crops = [eval_transform(self.clip.img_size, i, self.clip.num_crops)
                            for i in range(self.clip.num_crops)]

    @property
    def training(self) -> bool:
        return self.mode in ("pretrain", "train")

    @property
    def views_per_video(self) -> int:
        return self.clip.num_clips * self.clip.num_crops if self.mode == "test" else 1

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain integer indices: their augmentation is a function of (seed, epoch,
        index). The training loader passes `ItemKey`s instead, which carry their epoch, so its
        persistent workers need no epoch state."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * self.views_per_video

    # -- decoding -----------------------------------------------------------------------------
    def open(self, record: VideoRecord):
        if record.num_frames is not None:
            return FrameFolderReader(record.path, record.num_frames, short_side=self.decode_short_side)
        return open_video(record.path, self.backend, self.decode_short_side)

    def clip_indices(self, n: int, rng, clip_index: int = 0) -> list[int]:
        c = self.clip
        if c.sampling == "segment":
            return segment_clip(n, c.num_frames, rng if self.training else None, clip_index,
                                c.num_clips if self.mode == "test" else 1)
        if self.training:
            return dense_clip(n, c.num_frames, c.sampling_rate, rng, c.short_videos)
        clips = dense_test_clips(n, c.num_frames, c.sampling_rate,
                                 c.num_clips if self.mode == "test" else 1, c.short_videos)
        return clips[clip_index if self.mode == "test" else 0]

    def _load(self, index: int, rng: np.random.Generator, clip_index: int = 0, crop_index: int = 0,
              place=None):
        record = self.records[index]
        motion = self.motion if self.training else None
        vectors = None
        with self.open(record) as reader:
            require_frames(reader, self.clip.min_frames)
            n = len(reader)
            repeats = self.clip.num_repeats if self.training else 1
            indices = self.clip_indices(n, rng, clip_index)
            if motion is not None and motion.source != "diff" and hasattr(reader, "get_frames_and_motion"):
                decoded, vectors = reader.get_frames_and_motion(indices)
            else:
                decoded = reader.get_frames(indices)
            # (T, C, H, W) view of channels-last memory: the layout uint8 resizing is fastest on
            frames = torch.from_numpy(decoded).permute(0, 3, 1, 2)
        # repeated sampling (MAE-ST repeat_aug, VideoMAE V2 num_sample): one decoded clip, K
        # independent spatial augmentations; the model then draws a different mask for each
        transform = self._test_crops[crop_index] if self.mode == "test" else self.transform
        clips, maps = [], []
        for _ in range(repeats):
            if vectors is not None:
                # the motion map takes the clip's own crop, resize and flip: the same transform
                # replaying the same draws (a copy of the generator; they depend on the size only)
                maps.append(transform(torch.from_numpy(vectors)[:, None], copy.deepcopy(rng))[:, 0])
            clips.append(transform(frames, rng) if transform is not None else frames)
        item = {"index": index, "label": record.label}
        if motion is not None:
            item.update(self._motion_masks(clips, maps, place or (0, self.epoch, index)))
        clips = channels_first(clips)  # K, C, T, H, W
        if repeats > 1:
            item["video"] = clips
            item["label"] = torch.full((repeats,), record.label, dtype=torch.long)
        else:
            item["video"] = clips[0]
        return item

    def _motion_masks(self, clips: list[torch.Tensor], maps: list[torch.Tensor], place) -> dict:
        """Motion-guided masks (`videomae.masking.motion`) of the item's K transformed clips: a
        (K, N) or, for K = 1, (N,) `mask` and the `motion_source` ("mv" or "diff"). `place` is the
        item's (epoch, step, global row); a plain integer index is placed at (0, epoch, index)."""
        from ..masking.motion import cube_scores, frame_difference_scores

        motion = self.motion
        epoch, step, row = place
        grid = motion.grid(clips[0])
        if maps:   # codec motion vector magnitudes, per pixel of each transformed clip
            scores = [cube_scores(m, motion.tubelet, motion.patch) for m in maps]
        else:
            scores = [frame_difference_scores(clip, motion.tubelet, motion.patch) for clip in clips]
        mask = motion.masks(torch.stack(scores), grid, epoch, step, row)
        return {"mask": mask if len(clips) > 1 else mask[0], "motion_source": "mv" if maps else "diff"}

    # -- items ----------------------------------------------------------------------------------
    def __getitem__(self, i: int) -> dict:
        if self.mode == "test":
            views = self.views_per_video
            index, view = divmod(i, views)
            clip_index, crop_index = divmod(view, self.clip.num_crops)
            item = self._load_eval(index, clip_index, crop_index)
            return {**item, "clip_index": clip_index, "crop_index": crop_index}
        if not self.training:
            return self._load_eval(i)
        if isinstance(i, tuple):
            # an ItemKey (epoch, step, global row, index) from the training sampler: the draw
            # depends on the item's place in the run only, not on worker, rank or world size
            *place, index = i
        else:
            place, index = None, i
        failures = []   # (index, reason): counted and listed by the main process
        for attempt in range(self.faults.max_retries + 1):
            key = [*place, attempt] if place is not None else [self.epoch, index, attempt]
            rng = np.random.default_rng([self.seed, *key])
            try:
                item = self._load(index, rng, place=place)
            except VideoDecodeError as err:   # only an unusable file; anything else is a bug
                failures.append((index, " ".join(str(err).split())))
                index = int(rng.integers(len(self.records)))
                continue
            item["load_failures"] = failures
            return item
        last, reason = failures[-1]
        raise TooManyBadVideos(f"{self.faults.max_retries + 1} videos in a row failed to load (last: "
                               f"{self.records[last].where or self.records[last].path}: {reason}); is DATA.ROOT right?")

    def _load_eval(self, index: int, clip_index: int = 0, crop_index: int = 0) -> dict:
        """One evaluation view. A video that fails is named by split and list file:line; with
        `skip_bad` it becomes `{"index", "bad": message}`, which `collate_clips` sets apart."""
        try:
            return self._load(index, np.random.default_rng([self.seed, index]), clip_index, crop_index)
        except VideoDecodeError as err:   # only an unusable file; anything else is a bug
            record = self.records[index]
            message = f"{self.mode} video {record.where or record.path} failed to load: {' '.join(str(err).split())}"
            if self.skip_bad:
                return {"index": index, "bad": message}
            raise EvalVideoError(f"{message}; drop it from the list (tools/check_videos.py finds every such file) "
                                 "or skip such videos with DATA.EVAL_SKIP_BAD True") from None


def collate_clips(batch: list[dict]) -> dict:
    """Default collation, then repeated clips (B, K, C, T, H, W) flattened to (B*K, C, T, H, W).
    Training items' `load_failures` become `loads` ([load attempts of this batch]; lists, so that
    joined parts concatenate) and `load_failures` (every (index, reason) of the batch).
    Evaluation views that failed to load (skipped on request) go to `bad`: a list of
    (index, clip_index, crop_index, message); a batch of only those has no `video`."""
    if batch and "load_failures" in batch[0]:
        failures = [f for item in batch for f in item["load_failures"]]
        out = collate_clips([{k: v for k, v in item.items() if k != "load_failures"} for item in batch])
        return {**out, "loads": [len(batch) + len(failures)], "load_failures": failures}
    bad = [(item["index"], item.get("clip_index", 0), item.get("crop_index", 0), item["bad"])
           for item in batch if "bad" in item]
    if bad:
        good = [item for item in batch if "bad" not in item]
        return {**(collate_clips(good) if good else {}), "bad": bad}
    out = default_collate(batch)
    video = out["video"]
    if video.ndim == 6:
        b, k = video.shape[:2]
        out["video"] = video.flatten(0, 1)
        out["label"] = out["label"].flatten(0, 1)
        out["index"] = out["index"].repeat_interleave(k)
        if "mask" in out:
            out["mask"] = out["mask"].flatten(0, 1)
    return out


def read_failure_log(path: str | os.PathLike) -> list[str]:
    """Paths listed in a bad-video log (`path<TAB>list file:line<TAB>reason`, one per bad file)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.split("\t", 1)[0] for line in handle if line.strip()]


# Loaders whose worker processes outlive an iteration (persistent workers). Workers ignore
# SIGTERM, so multiprocessing's exit hook, which terminates daemonic children with SIGTERM and
# then joins them, would wait forever: this hook (registered later, so run earlier) asks them to
# stop the ordinary way first.
_PERSISTENT = weakref.WeakSet()


def shut_down_on_exit(loader):
    """Register a loader (anything with `shutdown()`, or a DataLoader) for a clean stop at exit."""
    _PERSISTENT.add(loader)
    return loader


@atexit.register
def _shut_down_loaders() -> None:
    for loader in list(_PERSISTENT):
        if hasattr(loader, "shutdown"):
            loader.shutdown()
            continue
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def worker_init(_worker_id: int) -> None:
    # many workers x many intra-op threads oversubscribe the CPU that decoding needs
    torch.set_num_threads(1)
    # the main process owns shutdown: a SIGTERM/SIGINT sent to the whole process group (SLURM
    # preemption, Ctrl-C) must not kill workers under a trainer that is still checkpointing
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: VideoDataset, batch_size: int, num_workers: int = 4, shuffle: bool | None = None,
                sampler=None, drop_last: bool | None = None, timeout: float = 600.0, seed: int = 0):
    """A DataLoader with the settings video loading needs: one torch thread per worker, persistent
    workers, a timeout so a stuck decoder surfaces as an error instead of a hang, repeated clips
    flattened."""
    training = getattr(dataset, "training", False)  # a Subset of a dataset evaluates
    generator = torch.Generator().manual_seed(seed)
    return shut_down_on_exit(torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers,
        shuffle=(training if shuffle is None else shuffle) if sampler is None else False,
        sampler=sampler, drop_last=training if drop_last is None else drop_last,
        collate_fn=collate_clips, pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0, timeout=timeout if num_workers > 0 else 0,
        worker_init_fn=worker_init, generator=generator,
        prefetch_factor=4 if num_workers > 0 else None))


