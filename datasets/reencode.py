"""Re-encode videos to a short side (e.g. 320, as VideoMAE does for Kinetics) with a short keyframe
interval, so random access decodes few frames. Output: H.264 mp4, same relative paths.

    python datasets/reencode.py --list lists/train.csv --root /data/k400 --out /data/k400_320 \
        --short-side 320 --keyint 16 --workers 16
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
    args = parser.parse_args(argv)

    rel = [line.rstrip("\n").rsplit(None, 1)[0] for line in open(args.list) if line.strip()]
    jobs = [(str(args.root / r), str((args.out / r).with_suffix(".mp4"))) for r in rel]
    jobs = [j for j in jobs if not os.path.exists(j[1])]  # resumable
    failures = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(reencode, s, d, args.short_side, args.keyint, args.crf) for s, d in jobs]
        for future in tqdm(as_completed(futures), total=len(futures), desc="re-encode"):
            if future.result():
                failures.append(future.result())
    if failures:
        (args.out / "reencode_failures.txt").write_text("\n".join(failures) + "\n")
    print(f"{len(jobs) - len(failures)} re-encoded, {len(failures)} failed, "
          f"{len(rel) - len(jobs)} already done; lists keep working with --out as data root "
          "(extension now .mp4)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
