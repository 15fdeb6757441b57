"""Annotation lists: the VideoMAE formats.

- video lists (`train.csv`, `val.csv`, `test.csv`): `<path> <label>` per line, space separated, no
  header; a path may contain spaces (the label is the last field);
- raw-frame lists (VideoMAE V2's SSv2 frames): `<frame_folder> <num_frames> <label>`, files
  `img_{:05}.jpg` numbered from 1;
- VideoMAE V2 pretraining lists: `<path> 0 -1` (start index and frame count unused for videos).

Every problem is a `AnnotationError` naming the list file and line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("video", "rawframes", "v2_pretrain")


class AnnotationError(ValueError):
    pass


@dataclass(frozen=True)
class VideoRecord:
    path: str                    # video file, or frame folder for raw frames
    label: int                   # -1: unlabeled (pretraining)
    num_frames: int | None = None  # raw frames only
    where: str = ""              # "list.csv:12", for messages


def _parse_int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AnnotationError(f"{where}: {what} {text!r} is not an integer") from None


def decode_list_line(raw: bytes, number: int, where: str) -> str:
    """Line `number` (from 1) of a list read as bytes: UTF-8, without the byte-order mark some editors put at the start of the file."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{where}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                              "save the list as UTF-8") from None
    return text.removeprefix("\ufeff") if number == 1 else text


def read_video_list(list_file: str | os.PathLike, data_root: str | os.PathLike = "", fmt: str = "video",
                    num_classes: int | None = None, allow_unlabeled: bool = False,
                    check_exists: bool = True) -> list[VideoRecord]:
    """Parse a list file into records; paths are joined to `data_root` unless absolute."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; choose from {FORMATS}")
    list_file = Path(list_file)
    if not list_file.is_file():
        raise AnnotationError(f"annotation list not found: {list_file} (prepare it with the scripts "
                              "in datasets/, or fix the list path in the config)")
    records, missing = [], []
    with open(list_file, "rb") as handle:   # bytes: a decoding error is reported with its line
        for number, raw in enumerate(handle, start=1):
            where = f"{list_file}:{number}"
            line = decode_list_line(raw, number, where).strip()
            if not line or line.startswith("#"):
                continue
            fields = line.rsplit(None, 1 if fmt == "video" else 2)
            expected = 2 if fmt == "video" else 3
            if len(fields) != expected:
                shape = {"video": "<path> <label>", "rawframes": "<frame_folder> <num_frames> <label>",
                         "v2_pretrain": "<path> <start> <num_frames>"}[fmt]
                raise AnnotationError(f"{where}: expected '{shape}', got {line!r}")
            num_frames = None
            if fmt == "video":
                path, label = fields[0], _parse_int(fields[1], "label", where)
            elif fmt == "rawframes":
                path = fields[0]
                num_frames = _parse_int(fields[1], "frame count", where)
                label = _parse_int(fields[2], "label", where)
                if num_frames <= 0:
                    raise AnnotationError(f"{where}: frame count must be positive, got {num_frames}")
            else:
                path, label = fields[0], -1
                _parse_int(fields[1], "start index", where)
                _parse_int(fields[2], "frame count", where)
            if label < 0 and not ((allow_unlabeled or fmt == "v2_pretrain") and label == -1):
                raise AnnotationError(f"{where}: label {label} is negative")
            if num_classes is not None and label >= num_classes:
                raise AnnotationError(f"{where}: label {label} is not a known class (the model has {num_classes} "
                                      "classes: MODEL.NUM_CLASSES, or DATA.NUM_CLASSES when that is 0)")
            full = path if os.path.isabs(path) else os.path.join(os.fspath(data_root), path)
            if check_exists and not os.path.exists(full):
                missing.append(f"{where}: {full}")
            records.append(VideoRecord(full, label, num_frames, where))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AnnotationError(f"{missing[0]} does not exist{more}; check DATA.ROOT / data_root, or drop "
                              "missing entries (datasets/*/prepare scripts report them)")
    if not records:
        raise AnnotationError(f"{list_file} has no entries")
    return records


def write_video_list(path: str | os.PathLike, entries) -> None:
    """Write `(path, label)` pairs in the VideoMAE list format, atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for video, label in entries:
            handle.write(f"{video} {label}\n")
    os.replace(tmp, path)
