"""Decode-check every entry of a VideoMAE list in parallel; write the bad ones.

    python tools/check_videos.py --list lists/train.csv --root /data/ssv2 --workers 16 \
        --out lists/train_bad.txt [--write-clean lists/train_clean.csv]

A video passes when it opens, reports frames, and its first, middle and last frames decode.
Each check runs in a worker process with a timeout, so a file that hangs a decoder is reported,
not waited on forever.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor, TimeoutError
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomae.cli import EXIT_ERROR, EXIT_OK, run_tool  # noqa: E402


def check(path: str, backend: str) -> str | None:
    from videomae.data.decoding import open_video

    try:
        with open_video(path, backend, fallback=False) as reader:
            n = len(reader)
            reader.get_frames(sorted({0, n // 2, n - 1}))
        return None
    except Exception as err:  # any failure makes the video bad; the message says why
        return str(err).replace("\n", " ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=Path(""))
    parser.add_argument("--backend", default="decord", choices=["decord", "pyav"])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per video")
    parser.add_argument("--out", type=Path, help="bad entries (default: <list>.bad.txt)")
    parser.add_argument("--write-clean", type=Path, help="also write the list without the bad entries")
    args = parser.parse_args(argv)

    if not args.list.exists():
        raise FileNotFoundError(2, "list not found", str(args.list))
    if args.list.is_dir():
        raise IsADirectoryError(21, "--list is a folder, give the list file in it", str(args.list))
    from videomae.data.annotations import decode_list_line

    with open(args.list, "rb") as handle:   # a byte that is not UTF-8 is reported with its line
        lines = [decode_list_line(raw, n, f"{args.list}:{n}").rstrip("\r\n") for n, raw in enumerate(handle, 1)]
    lines = [line for line in lines if line.strip()]
    paths = [line.rsplit(None, 1)[0] for line in lines]
    full = [p if os.path.isabs(p) else os.path.join(args.root, p) for p in paths]
    out = args.out or args.list.with_suffix(".bad.txt")
    bad = {}
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        futures = [pool.submit(check, path, args.backend) for path in full]
        for number, future in enumerate(tqdm(futures, desc=f"checking {args.list.name}", unit="video")):
            try:
                error = future.result(timeout=args.timeout)
            except TimeoutError:
                error = f"decoding took longer than {args.timeout:.0f} s"
            if error:
                bad[number] = error
    with open(out, "w", encoding="utf-8") as handle:
        for number, error in bad.items():
            handle.write(f"{args.list}:{number + 1}\t{full[number]}\t{error}\n")
    if args.write_clean:
        with open(args.write_clean, "w", encoding="utf-8") as handle:
            handle.writelines(f"{line}\n" for n, line in enumerate(lines) if n not in bad)
    print(f"{len(lines) - len(bad)} of {len(lines)} videos decode; {len(bad)} bad, listed in {out}")
    return EXIT_ERROR if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(run_tool(main))
