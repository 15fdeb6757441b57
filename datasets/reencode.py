"""Re-encode videos to a short side (e.g. 320, as VideoMAE does for Kinetics) with a short keyframe
interval, so random access decodes few frames. Output: H.264 mp4 under --out, same relative paths
with the extension `.mp4` (an SSv2 `123.webm` becomes `123.mp4`).

    python datasets/reencode.py --list /data/k400/lists/train.csv --root /data/k400 --out /data/k400_320 \
        --short-side 320 --keyint 16 --workers 16

The list is rewritten for the new files: `--list-out` (default: the list's own name under --out)
gets every line whose video re-encoded, its path ending in `.mp4`, relative to --out. Use it with
`DATA.ROOT <--out>` and `DATA.LIST_DIR <folder of --list-out>`; the old list still names the old
files (and, if any extension changed, no longer matches the new ones).
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm


def reencode(src: str, dst: str, short_side: int, keyint: int, crf: int) -> str | None:
    import av

    from videomae.data.decoding import short_side_size

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".part.mp4"
    try:
        with av.open(src) as inp, av.open(tmp, "w") as out:
            vin = inp.streams.video[0]
            h, w = short_side_size(vin.codec_context.height, vin.codec_context.width, short_side)
            rate = vin.average_rate or vin.guessed_rate or 30
            vout = out.add_stream("libx264", rate=rate)
            vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
            vout.options = {"crf": str(crf), "g": str(keyint), "preset": "fast"}
            for frame in inp.decode(vin):
                frame = frame.reformat(width=w, height=h, format="yuv420p")
                frame.pts = None
                for packet in vout.encode(frame):
                    out.mux(packet)
            for packet in vout.encode():
                out.mux(packet)
        os.replace(tmp, dst)  # a killed run never leaves a complete-looking partial file
        return None
    except Exception as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        return f"{src}\t{err}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", type=Path, required=True, help="VideoMAE list (<path> <label>)")
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--short-side", type=int, default=320)
    parser.add_argument("--keyint", type=int, default=16)
    parser.add_argument("--crf", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--list-out", type=Path, help="the rewritten list (default: --out/<name of --list>)")
    args = parser.parse_args(argv)

    entries = read_entries(args.list)
    list_out = args.list_out or args.out / args.list.name
    if list_out.resolve() == args.list.resolve():
        sys.exit(f"error: --list-out {list_out} is the input list; give another path")
    todo = [(str(args.root / rel), str(args.out / new)) for rel, new, _ in entries]
    jobs = [j for j in todo if not os.path.exists(j[1])]  # resumable
    failures = {}
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {pool.submit(reencode, s, d, args.short_side, args.keyint, args.crf): s for s, d in jobs}
        for future in tqdm(as_completed(futures), total=len(futures), desc="re-encode"):
            if future.result():
                failures[futures[future]] = future.result()
    if failures:
        (args.out / "reencode_failures.txt").write_text("\n".join(failures.values()) + "\n")
    kept = [f"{new}{rest}\n" for (rel, new, rest), (src, _) in zip(entries, todo) if src not in failures]
    list_out.parent.mkdir(parents=True, exist_ok=True)
    list_out.write_text("".join(kept))
    print(f"{len(jobs) - len(failures)} re-encoded, {len(failures)} failed, {len(todo) - len(jobs)} already done; "
          f"list of the {len(kept)} new files: {list_out} (DATA.ROOT {args.out}, DATA.LIST_DIR {list_out.parent})")
    return 1 if failures else 0


def read_entries(path: Path) -> list[tuple[str, str, str]]:
    """(path, path with .mp4, the rest of the line) per non-empty line of a `<path> <label>` list."""
    entries = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        sys.exit(f"error: list not found: {path}")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.rstrip().rsplit(None, 1)
        rel, rest = (parts[0], " " + parts[1]) if len(parts) == 2 else (parts[0], "")
        if os.path.isabs(rel):
            sys.exit(f"error: {path}:{number}: {rel} is an absolute path; the list must hold paths relative "
                     "to --root, which are written again under --out")
        entries.append((rel, Path(rel).with_suffix(".mp4").as_posix(), rest))
    return entries


if __name__ == "__main__":
    sys.exit(main())
