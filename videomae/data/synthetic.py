"""Synthetic Something-Something-like videos: moving shapes whose class depends on temporal order.

Every class has its time-reversed twin (left->right vs right->left, clockwise vs counter-clockwise,
approaching vs receding, ...), so a single frame, or a bag of frames, cannot tell them apart: a
model has to see motion. Clips are written as real H.264 mp4 files with PyAV, along with
VideoMAE-format lists (`train.csv`, `val.csv`, `test.csv`) and a class index.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 2  # bump when the pictures change, so stale datasets are rebuilt

CLASSES = [
    "Moving something from left to right",
    "Moving something from right to left",
    "Moving something up",
    "Moving something down",
    "Turning something clockwise",
    "Turning something counterclockwise",
    "Pushing something towards the camera",
    "Pulling something away from the camera",
]


def _polygon_mask(height, width, vertices):
    """Boolean image of a convex polygon (vertices counter-clockwise in image coordinates)."""
    ys, xs = np.mgrid[0:height, 0:width]
    inside = np.ones((height, width), dtype=bool)
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _shape_vertices(kind: str, cx, cy, size, angle):
    if kind == "bar":  # elongated, so rotation is visible
        corners = [(-1.0, -0.35), (1.0, -0.35), (1.0, 0.35), (-1.0, 0.35)]
    elif kind == "triangle":
        corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:  # arrow-like pentagon: asymmetric, so its orientation is unambiguous
        corners = [(-1.0, -0.5), (0.3, -0.5), (1.0, 0.0), (0.3, 0.5), (-1.0, 0.5)]
    c, s = math.cos(angle), math.sin(angle)
    pts = [(cx + size * (x * c - y * s), cy + size * (x * s + y * c)) for x, y in corners]
    # keep a consistent winding for the half-plane test
    area = sum(pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
               for i in range(len(pts)))
    return pts if area > 0 else pts[::-1]


def render_clip(label: int, num_frames: int = 32, height: int = 96, width: int = 128,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """One clip of class `label` as uint8 (T, H, W, 3)."""
    rng = rng or np.random.default_rng()
    # A flat background and a large shape: within a few CPU minutes a masked autoencoder then spends
    # its loss on where the shape is at masked times -- the motion the classes are about. (With a
    # textured background the budget goes to the texture, and the pretrained encoder fine-tunes
    # worse than a freshly initialised one.)
    background = rng.integers(0, 90, size=3)
    color = rng.integers(120, 256, size=3)
    kind = ["bar", "triangle", "arrow"][rng.integers(3)]
    base_size = rng.uniform(0.22, 0.3) * min(height, width)
    cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height
    angle0 = rng.uniform(0, 2 * math.pi)
    travel = rng.uniform(0.25, 0.4)
    spin = rng.uniform(0.6, 1.0) * math.pi
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        f = t / max(num_frames - 1, 1) - 0.5  # -0.5 .. 0.5
        x, y, size, angle = cx, cy, base_size, angle0
        if label in (0, 1):
            x = cx + (1 if label == 0 else -1) * f * travel * 2 * width * 0.6
        elif label in (2, 3):
            y = cy + (-1 if label == 2 else 1) * f * travel * 2 * height * 0.6
        elif label in (4, 5):  # image y points down, so a growing angle turns clockwise on screen
            angle = angle0 + (1 if label == 4 else -1) * f * 2 * spin
        else:
            size = base_size * (1 + (1 if label == 6 else -1) * f * 1.2)
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[:] = background + 30
        image[_polygon_mask(height, width, _shape_vertices(kind, x, y, size, angle))] = color
        frames[t] = image
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 12, keyint: int = 8,
              crf: int = 20) -> None:
    """Write uint8 RGB frames (T, H, W, 3) as H.264 (yuv420p) mp4 with PyAV."""
    import av

    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "g": str(keyint), "preset": "veryfast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def dataset_summary(videos_per_class: int = 12, val_per_class: int = 4, num_frames: int = 32, height: int = 96,
                    width: int = 128, fps: int = 12, seed: int = 0, keyint: int = 8) -> dict:
    """What `make_synthetic_dataset` writes to DONE for these arguments: its counts and its recipe."""
    return {"train": len(CLASSES) * videos_per_class, "val": len(CLASSES) * val_per_class,
            "classes": len(CLASSES), "frames": num_frames, "size": [height, width], "fps": fps,
            "seed": seed, "keyint": keyint, "version": GENERATOR_VERSION}


def make_synthetic_dataset(root: str | os.PathLike, videos_per_class: int = 12, val_per_class: int = 4,
                           num_frames: int = 32, height: int = 96, width: int = 128, fps: int = 12,
                           seed: int = 0, keyint: int = 8) -> dict:
    """Write videos under `root/videos/` and the lists `train.csv`, `val.csv`, `test.csv` (test = val,
    as in VideoMAE) plus `classes.json`. Returns counts. Output made before with the same arguments
    and generator version is reused; anything else there is replaced."""
    root = Path(root)
    done = root / "DONE"
    summary = dataset_summary(videos_per_class, val_per_class, num_frames, height, width, fps, seed, keyint)
    if done.exists() and json.loads(done.read_text()) == summary:
        return summary
    if done.exists():  # a stale dataset of ours: replace it whole
        done.unlink()
        shutil.rmtree(root / "videos", ignore_errors=True)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for label in range(len(CLASSES)):
        for i in range(videos_per_class + val_per_class):
            split = "train" if i < videos_per_class else "val"
            rel = f"videos/{split}_{label:02d}_{i:03d}.mp4"
            write_mp4(root / rel, render_clip(label, num_frames, height, width, rng), fps=fps,
                      keyint=keyint)
            splits[split].append(f"{rel} {label}")
    for split, lines in splits.items():
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "test.csv").write_text((root / "val.csv").read_text())
    (root / "classes.json").write_text(json.dumps({name: i for i, name in enumerate(CLASSES)}, indent=1))
    # written last and atomically: processes waiting for the set read either nothing or all of it
    (root / "DONE.tmp").write_text(json.dumps(summary))
    os.replace(root / "DONE.tmp", done)
    return summary


DEMO_SIZE = dict(videos_per_class=24, val_per_class=8)  # the set `make demo` and configs/demo/ use


def ensure_demo_dataset(root: str | os.PathLike, is_main: bool = True, timeout_s: float = 600) -> dict:
    """The demo set at `root`, made on first use. In a multi-process run only the main process
    writes it; the others wait for its DONE marker (and give up with an error, never hang)."""
    if is_main:
        return make_synthetic_dataset(root, **DEMO_SIZE)
    done, expected = Path(root) / "DONE", dataset_summary(**DEMO_SIZE)
    deadline = time.monotonic() + timeout_s
    while not (done.exists() and json.loads(done.read_text()) == expected):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the main process did not finish the synthetic dataset in {root} "
                               f"within {timeout_s:.0f} s")
        time.sleep(1)
    return expected
