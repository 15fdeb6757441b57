"""Loader throughput in one process (= per DataLoader worker), side by side in one run:

  - decode-only ceiling: open the video and decode the clip's frames, nothing else;
  - the pretraining pipeline (sampling + decode + multi-scale crop to --size), K = 1;
  - the same with repeated sampling, K = --repeats clips cut from one decode;
  for decord, PyAV and torchcodec (optional: `pip install -e '.[torchcodec]'` and FFmpeg's libraries);
  - with --motion, the pipeline again with motion-guided masks drawn per clip (MASK.TYPE motion,
    videomae/masking/motion.py): codec motion vectors with PyAV, frame differences otherwise.

    python benchmarks/loader.py                              # generated 320x240 videos
    python benchmarks/loader.py --list lists/k400/train.csv --root /data/k400 --videos 200

Clips per second are medians over --rounds passes; ratios are against the decode-only ceiling of
the same backend on the same videos.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from videomae.data import ClipConfig, VideoDataset, open_video, read_video_list
from videomae.data.decoding import decord_available, torchcodec_available
from videomae.data.synthetic import make_synthetic_dataset


def clips_per_second(fn, n_items: int, clips_per_item: int, rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n_items):
            fn(i)
        rates.append(n_items * clips_per_item / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list")
    parser.add_argument("--root", default="")
    parser.add_argument("--videos", type=int, default=24, help="videos per pass")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rate", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=None, help="default: decord, pyav and torchcodec, those installed")
    parser.add_argument("--video-frames", type=int, default=300, help="generated: 10 s at 30 fps, as K400")
    parser.add_argument("--keyint", type=int, default=250, help="generated: keyframe interval (x264 "
                        "default, as downloaded videos); 16 mimics datasets/reencode.py")
    parser.add_argument("--motion", action="store_true", help="also time the pipeline with motion masks on")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker

    if args.list:
        records = read_video_list(args.list, args.root)[: args.videos]
    else:
        root = Path(tempfile.gettempdir()) / f"videomae_loader_bench_{args.video_frames}_{args.keyint}"
        make_synthetic_dataset(root, videos_per_class=3, val_per_class=0, num_frames=args.video_frames,
                               height=240, width=320, fps=30, keyint=args.keyint)
        records = read_video_list(root / "train.csv", root)[: args.videos]
    print(f"{len(records)} videos, clip {args.frames} frames at stride {args.rate}, crop {args.size}, "
          f"one process, torch threads 1")

    for record in records:  # warm the page cache so the first contender pays no disk reads
        Path(record.path).read_bytes()

    def datasets(backend, motion=None):
        return {k: VideoDataset(records, "pretrain", ClipConfig(num_frames=args.frames, sampling_rate=args.rate,
                                                                img_size=args.size, num_repeats=k),
                                backend=backend, motion=motion)
                for k in (1, args.repeats)}

    def motion_masks():
        from videomae.masking.motion import LoaderMotionMasks, MotionMasking
        return LoaderMotionMasks(MotionMasking(0.9), tubelet=2, patch=16, seed=0, steps_per_epoch=1)

    backends = args.backends.split(",") if args.backends else \
        [b for b, ok in (("decord", decord_available()), ("pyav", True), ("torchcodec", torchcodec_available())) if ok]
    for backend in backends:
        ds = datasets(backend)

        def decode_only(i, backend=backend):
            # exactly the frames the pipeline decodes: its first draw from the item's generator
            rng = np.random.default_rng([ds[1].seed, 0, i, 0])
            with open_video(records[i].path, backend) as reader:
                reader.get_frames(ds[1].clip_indices(len(reader), rng))

        contenders = {"ceiling": (decode_only, 1), "k1": (ds[1].__getitem__, 1),
                      "kk": (ds[args.repeats].__getitem__, args.repeats)}
        if args.motion:
            mds = datasets(backend, motion_masks())
            contenders.update({"motion_k1": (mds[1].__getitem__, 1),
                               "motion_kk": (mds[args.repeats].__getitem__, args.repeats)})
        rates = {name: [] for name in contenders}
        for _ in range(args.rounds):  # interleaved, so drift in machine load hits all alike
            for name, (fn, clips) in contenders.items():
                rates[name].append(clips_per_second(fn, len(records), clips, 1))
        ceiling, k1, kk = (statistics.median(rates[n]) for n in ("ceiling", "k1", "kk"))
        print(f"[{backend}] decode-only ceiling {ceiling:7.1f} clips/s | pipeline K=1 {k1:7.1f} "
              f"({k1 / ceiling:.0%} of ceiling) | K={args.repeats} {kk:7.1f} clips/s "
              f"({kk / k1:.2f}x K=1)")
        if args.motion:
            source = mds[1][0]["motion_source"]
            m1, mk = (statistics.median(rates[n]) for n in ("motion_k1", "motion_kk"))
            print(f"[{backend}] motion masks on ({'motion vectors' if source == 'mv' else 'frame differences'}): "
                  f"K=1 {m1:7.1f} clips/s ({m1 / k1:.2f}x off) | K={args.repeats} {mk:7.1f} clips/s "
                  f"({mk / kk:.2f}x off)")

if __name__ == "__main__":
    main()
