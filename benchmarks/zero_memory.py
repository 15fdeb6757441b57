"""Optimizer memory per rank under ZeRO stages 0-3 with 2 ranks, measured (not assumed).

    python benchmarks/zero_memory.py                  # runs torchrun --nproc_per_node 2 per stage
    python benchmarks/zero_memory.py --size base

Each stage builds the pretraining model, takes one DeepSpeed step on random clips, and counts the
bytes of the optimizer's tensors on each rank. Stage 0 keeps full Adam moments on every rank;
stages 1-3 partition them, so each of 2 ranks should hold about half.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def worker(args) -> None:
    import deepspeed
    import torch

    from videomae.engine.distributed import init_distributed
    from videomae.engine.memory import optimizer_state_bytes
    from videomae.engine.optim import param_groups
    from videomae.masking import build_masking
    from videomae.models import build_pretrain_model

    info, device = init_distributed()
    torch.manual_seed(0)
    model = build_pretrain_model(args.size, num_frames=args.frames, img_size=args.img_size, decoder_depth=1)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": args.stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**12}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    video = torch.randn(1, 3, args.frames, args.img_size, args.img_size, device=device)
    mask = build_masking("tube", 0.9)(1, model.grid_size, device=device, generator=torch.Generator().manual_seed(0))
    engine.backward(engine(video, mask).loss)
    engine.step()
    sizes = optimizer_state_bytes(engine)
    params = sum(p.numel() for p in model.parameters())
    row = {"stage": args.stage, "rank": info.rank, "params": params, **sizes}
    # Ranks share one stdout pipe, so rank 0 alone prints: two ranks printing at once interleave.
    rows = [None] * info.world_size
    torch.distributed.all_gather_object(rows, row)
    if info.rank == 0:
        print("\n".join(json.dumps(r) for r in rows), flush=True)


def run_stage(stage: int, args) -> list[dict]:
    from videomae.engine.distributed import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), __file__, "--worker", "--stage", str(stage), "--size", args.size,
           "--frames", str(args.frames), "--img-size", str(args.img_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or len(rows) != 2:
        raise RuntimeError(f"stage {stage} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return sorted(rows, key=lambda r: r["rank"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--size", default="small")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=64)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    results = {int(s): run_stage(int(s), args) for s in args.stages.split(",")}
    base = results.get(0)
    print(f"pretrain_videomae_{args.size}: {base[0]['params'] if base else '?'} parameters, 2 ranks, fp32")
    for stage, rows in results.items():
        for row in rows:
            ratio = f" = {row['adam_moments'] / base[row['rank']]['adam_moments']:.3f} x ZeRO-0" if base else ""
            print(f"ZeRO-{stage} rank {row['rank']}: Adam moments {row['adam_moments'] / 2**20:8.2f} MiB{ratio}, "
                  f"fp32 master partition {row['fp32_master_partition'] / 2**20:8.2f} MiB")


if __name__ == "__main__":
    main()
