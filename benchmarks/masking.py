"""Mask drawing cost on one CPU thread: BlockMasking vs TubeMasking, side by side.

    python benchmarks/masking.py                    # 2,048 clips of an 8x14x14 grid, ratio 0.9
    python benchmarks/masking.py --clips 256 --all  # also random / frame, fewer clips

Masks are drawn the way training draws them: `strategy.draw_rows(RowGenerator, grid)` for a range
of global rows (seeding protocol), so the time includes the per-row random numbers. Rounds
alternate between the contenders so drift in machine load hits both alike; figures are medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videomae.masking import build_masking  # noqa: E402
from videomae.seeding import RowGenerator  # noqa: E402


def time_once(strategy, clips: int, grid, step: int) -> float:
    start = time.perf_counter()
    strategy.draw_rows(RowGenerator.for_range(0, step, 0, clips, "mask"), grid)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=2048)
    parser.add_argument("--grid", type=int, nargs=3, default=(8, 14, 14))
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--all", action="store_true", help="time random and frame masking too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grid = tuple(args.grid)
    names = ["block", "tube"] + (["random", "frame"] if args.all else [])
    strategies = {name: build_masking(name, args.ratio) for name in names}
    times = {name: [] for name in names}
    for name in names:  # warm-up
        time_once(strategies[name], args.clips, grid, 0)
    for step in range(args.rounds):
        for name in names:
            times[name].append(time_once(strategies[name], args.clips, grid, step + 1))
    print(f"{args.clips} clips, grid {'x'.join(map(str, grid))}, ratio {args.ratio}, 1 thread, "
          f"median of {args.rounds} rounds")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name in names:
        print(f"  {name:<7} {medians[name]:8.1f} ms   (min {min(times[name]):.1f})")
    print(f"  block / tube: {medians['block'] / medians['tube']:.2f}x")


if __name__ == "__main__":
    main()
