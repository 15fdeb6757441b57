"""Decode-check the videos of a VideoMAE list, or every video under a folder, in parallel; write the
bad ones with the reason, and count them per reason.

    python tools/check_videos.py --list lists/train.csv --root /data/ssv2 --workers 16 \
        --out lists/train_bad.txt [--write-clean lists/train_clean.csv] [--full] [--min-frames 16]
    python tools/check_videos.py --folder /data/my_videos --full --write-clean my_videos.csv

Default (quick) check: the video opens, reports frames, and its first, middle and last frames
decode. That misses a file damaged between those frames, which then fails in training or stops an
evaluation; --full decodes every frame (in order, through the same backend the loaders use) and
checks that each one arrives. (decord decodes ahead in a thread of its own, so its quick check may
or may not run into damage past the frames it asked for; PyAV decodes only what it is asked for.) Run --full once on a new dataset, the quick check after copying it.
--min-frames N marks a video with fewer frames as too short: training treats one below
DATA.MIN_FRAMES (0 there means MODEL.NUM_FRAMES) as a bad video. Each check runs in a worker process
with a timeout, so a file that hangs a decoder is reported, not waited on forever.

A folder is searched recursively for video files (VIDEO_EXTENSIONS); its --write-clean list holds
the good files' paths relative to the folder with the label -1 (unlabeled): a pretraining list
for `DATA.ROOT <folder>`. Exit 0 when every video passes, 1 when any is bad.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, TimeoutError
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomae.cli import EXIT_ERROR, EXIT_OK, run_tool  # noqa: E402

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp",
                    ".ogv", ".ts")
CHUNK = 32   # frames decoded at a time by --full: memory stays at one chunk whatever the video's length

# the reasons a video is bad, in the order the summary lists them
REASONS = ("missing", "unreadable", "too_short", "decode", "incomplete", "timeout")


def check(path: str, backend: str, full: bool = False, min_frames: int = 1) -> tuple[str, str] | None:
    """None for a good video, else (reason, message)."""
    from videomae.data.decoding import VideoTooShort, open_video, require_frames

    if not os.path.isfile(path):
        return "missing", "no such file"
    try:
        reader = open_video(path, backend, fallback=False)
    except Exception as err:  # any failure to open makes the video bad; the message says why
        return "unreadable", _one_line(err)
    with reader:
        try:
            require_frames(reader, min_frames, "--min-frames")
            n = len(reader)
            if not full:
                for index in sorted({0, n // 2, n - 1}):   # one request each: a seek, then a few frames
                    reader.get_frames([index])
                return None
            for start in range(0, n, CHUNK):
                wanted = list(range(start, min(start + CHUNK, n)))
                got = len(reader.get_frames(wanted))
                if got != len(wanted):  # a backend that returns fewer frames than asked, silently
                    return "incomplete", f"frames {wanted[0]}-{wanted[-1]}: {got} of {len(wanted)} decoded"
        except VideoTooShort as err:
            return "too_short", _one_line(err)
        except Exception as err:
            return "decode", _one_line(err)
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def list_entries(path: Path, root: Path) -> list[tuple[str, str, str]]:
    """(where, full path, line) per non-empty line of a list; `where` is list:line."""
    from videomae.data.annotations import decode_list_line

    if not path.exists():
        raise FileNotFoundError(2, "list not found", str(path))
    if path.is_dir():
        raise IsADirectoryError(21, "--list is a folder, give the list file in it (or check every video under "
                                    "it with --folder)", str(path))
    entries = []
    with open(path, "rb") as handle:   # a byte that is not UTF-8 is reported with its line
        for number, raw in enumerate(handle, 1):
            line = decode_list_line(raw, number, f"{path}:{number}").rstrip("\r\n")
            if line.strip():
                rel = line.rsplit(None, 1)[0]
                entries.append((f"{path}:{number}", rel if os.path.isabs(rel) else os.path.join(root, rel), line))
    return entries


def folder_entries(folder: Path) -> list[tuple[str, str, str]]:
    """(relative path, full path, list line) per video file under `folder`, sorted."""
    if not folder.is_dir():
        raise NotADirectoryError(20, "--folder is not a folder", str(folder))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(VIDEO_EXTENSIONS):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, folder)
                found.append((rel, full, f"{rel} -1"))   # -1: unlabeled, which a pretraining list may be
    return sorted(found)


def summary(total: int, bad: dict, out: Path) -> str:
    counts = Counter(reason for reason, _ in bad.values())
    by_reason = ", ".join(f"{reason} {counts[reason]}" for reason in REASONS if counts[reason])
    return (f"{total - len(bad)} of {total} videos decode; {len(bad)} bad" +
            (f" ({by_reason})" if by_reason else "") + f", listed in {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--list", type=Path, help="a VideoMAE list (<path> [<label>] per line)")
    source.add_argument("--folder", type=Path, help="check every video file under this folder, recursively")
    parser.add_argument("--root", type=Path, default=Path(""), help="prefix of the list's relative paths (DATA.ROOT)")
    parser.add_argument("--backend", default="decord", choices=["decord", "pyav"])
    parser.add_argument("--full", action="store_true", help="decode every frame, not just the first, middle and last")
    parser.add_argument("--min-frames", type=int, default=1, help="a video with fewer frames is bad (too_short)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per video (--full: raise it for long "
                        "videos)")
    parser.add_argument("--out", type=Path, help="bad entries, tab-separated: where, path, reason, message "
                        "(default: <list>.bad.txt, or <folder>.bad.txt beside the folder)")
    parser.add_argument("--write-clean", type=Path, help="also write the list without the bad entries")
    args = parser.parse_args(argv)
    if args.min_frames < 1:
        parser.error(f"--min-frames must be >= 1, got {args.min_frames}")

    if args.list is not None:
        entries = list_entries(args.list, args.root)
        out = args.out or args.list.with_suffix(".bad.txt")
        name = args.list.name
    else:
        entries = folder_entries(args.folder)
        out = args.out or args.folder.resolve().with_name(args.folder.resolve().name + ".bad.txt")  # beside it
        name = str(args.folder)
    bad = {}
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        futures = [pool.submit(check, full, args.backend, args.full, args.min_frames) for _, full, _ in entries]
        for number, future in enumerate(tqdm(futures, desc=f"checking {name}", unit="video")):
            try:
                error = future.result(timeout=args.timeout)
            except TimeoutError:
                error = "timeout", f"decoding took longer than {args.timeout:.0f} s"
            if error:
                bad[number] = error
    with open(out, "w", encoding="utf-8") as handle:
        for number, (reason, message) in bad.items():
            where, full, _ = entries[number]
            handle.write(f"{where}\t{full}\t{reason}\t{message}\n")
    if args.write_clean:
        with open(args.write_clean, "w", encoding="utf-8") as handle:
            handle.writelines(f"{line}\n" for n, (_, _, line) in enumerate(entries) if n not in bad)
    print(summary(len(entries), bad, out))
    return EXIT_ERROR if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
