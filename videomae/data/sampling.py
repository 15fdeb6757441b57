"""Which frame indices make a clip.

- `dense_clip`: `num_frames` frames at stride `rate`, random start (pretraining, K400 training);
- `dense_test_clips`: the same, at `num_clips` evenly spaced starts (K400 multi-view test);
- `segment_clip`: TSN, one frame from each of `num_frames` equal segments, random in training and
  at the segment centre in evaluation (SSv2 fine-tuning); clip k of K shifts the position within
  each segment, so 2 clips take the centres and the starts, as official VideoMAE.

Videos shorter than a clip are handled without error: `short="clamp"` repeats the last frame,
`short="loop"` wraps around.
"""
from __future__ import annotations

import numpy as np


def _fit(indices: np.ndarray, num_video_frames: int, short: str) -> list[int]:
    if short == "loop":
        return (indices % num_video_frames).astype(int).tolist()
    if short == "clamp":
        return np.clip(indices, 0, num_video_frames - 1).astype(int).tolist()
    raise ValueError(f"short must be 'clamp' or 'loop', got {short!r}")


def dense_clip(num_video_frames: int, num_frames: int, rate: int, rng: np.random.Generator,
               short: str = "clamp") -> list[int]:
    span = (num_frames - 1) * rate + 1
    start = int(rng.integers(0, num_video_frames - span + 1)) if num_video_frames >= span else 0
    return _fit(start + rate * np.arange(num_frames), num_video_frames, short)


def dense_test_clips(num_video_frames: int, num_frames: int, rate: int, num_clips: int,
                     short: str = "clamp") -> list[list[int]]:
    span = (num_frames - 1) * rate + 1
    room = max(num_video_frames - span, 0)
    if num_clips == 1:
        starts = [room // 2]
    else:
        starts = [int(round(room * k / (num_clips - 1))) for k in range(num_clips)]
    return [_fit(s + rate * np.arange(num_frames), num_video_frames, short) for s in starts]


def segment_clip(num_video_frames: int, num_frames: int, rng: np.random.Generator | None = None,
                 clip_index: int = 0, num_clips: int = 1) -> list[int]:
    tick = num_video_frames / num_frames
    starts = tick * np.arange(num_frames)
    if rng is not None:  # training: anywhere inside each segment
        offsets = rng.random(num_frames) * tick
    else:
        offsets = np.full(num_frames, ((0.5 + clip_index / num_clips) % 1.0) * tick)
    return np.minimum((starts + offsets).astype(int), num_video_frames - 1).tolist()
