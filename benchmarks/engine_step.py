"""The training step, side by side in one process: plain PyTorch against the project's engine.

  plain   the same model, parameter groups, lr schedule, clipping and masks, bf16 autocast over
          fp32 weights (or fp32), torch's fused AdamW, `loss.backward(); opt.step()`
  engine  `Trainer.micro_step` + `Trainer.end_step`, exactly what `tools/train.py` runs per
          non-logging step, at each DeepSpeed ZeRO stage

For each: ms/step (median), the ratio to plain, aten ops dispatched per optimizer step, host reads
per step (`aten::_local_scalar_dense`, whatever asked for them), CUDA kernel launches, peak memory
and MFU (GPU). The op and read counts are the device-independent figures: they say what the host
does per step, and a CPU run measures them as well as a GPU run.

    python benchmarks/engine_step.py                                  # ViT-S 4x64x64, batch 2, CPU
    python benchmarks/engine_step.py --size tiny --frames 4 --img-size 32 --patch 8
    python benchmarks/engine_step.py --size base --frames 16 --img-size 224 --batch 32   # a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videomae.engine.config import load_config  # noqa: E402
from videomae.engine.flops import peak_flops, train_flops_per_clip  # noqa: E402
from videomae.engine.optim import build_optimizer, cosine_lr, set_lr  # noqa: E402
from videomae.engine.tasks import PretrainTask, StepContext  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def config(args, out_dir: str, data_dir: str, stage: int, precision: str):
    return load_config(os.path.join(ROOT, "configs/demo/pretrain.yaml"), [
        "OUTPUT_DIR", out_dir, "DATA.ROOT", data_dir, "DATA.LIST_DIR", data_dir,
        "MODEL.NAME", f"pretrain_videomae_{args.size}_patch16_224", "MODEL.NUM_FRAMES", str(args.frames),
        "MODEL.IMG_SIZE", str(args.img_size), "MODEL.PATCH_SIZE", str(args.patch), "MODEL.DEPTH", "0",
        "MODEL.DECODER_DEPTH", "4", "MODEL.NORM_TARGET", "True", "MASK.TYPE", "tube", "MASK.RATIO", "0.9",
        "TRAIN.BATCH_SIZE", str(args.batch), "DATA.NUM_REPEATS", "1", "DATA.NUM_WORKERS", "0",
        "TRAIN.CLIP_GRAD", str(args.clip_grad), "TRAIN.LOG_PERIOD", str(10**9), "LOG.PROGRESS", "False",
        "LOG.TENSORBOARD", "False", "TRAIN.AUTO_RESUME", "False", "DEEPSPEED.ZERO_STAGE", str(stage),
        "DEEPSPEED.PRECISION", precision])


def batch_for(cfg, device) -> dict:
    g = torch.Generator().manual_seed(0)
    shape = (cfg.TRAIN.BATCH_SIZE, 3, cfg.MODEL.NUM_FRAMES, cfg.MODEL.IMG_SIZE, cfg.MODEL.IMG_SIZE)
    return {"video": torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)}


class Bare:
    """The model called the way the tasks call DeepSpeed's engine."""

    def __init__(self, module, device):
        self.module, self.device = module, device

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def plain_contender(cfg, device):
    """The reference: what a careful user writes by hand."""
    task = PretrainTask(cfg)
    task.log = lambda line: None
    model = task.build_model().to(device)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in task.param_groups(model)]
    optimizer = build_optimizer("adamw", groups, cfg.TRAIN.BASE_LR, cfg.TRAIN.BETAS, cfg.TRAIN.EPS, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.DEEPSPEED.PRECISION == "bf16")
    engine, params = Bare(model, device), [p for p in model.parameters() if p.requires_grad]
    state = {"step": 0}

    def step(batch):
        set_lr(optimizer, cosine_lr(state["step"], 10**6, 10, cfg.TRAIN.BASE_LR, cfg.TRAIN.MIN_LR))
        with autocast:
            loss, _ = task.train_step(engine, batch, StepContext(state["step"], 0, 0, 1, 1, cfg.SEED))
        loss.backward()
        if cfg.TRAIN.CLIP_GRAD > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.TRAIN.CLIP_GRAD, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1

    return step, model, task


def engine_contender(cfg, device):
    from videomae.engine.trainer import Trainer

    task = PretrainTask(cfg)
    trainer = Trainer(cfg, task)
    trainer.log.info = lambda line: None

    def step(batch):
        trainer.micro_step(batch, 0)
        trainer.end_step()

    return step, trainer.engine.module, task


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(step, batch, device, warmup: int, steps: int) -> dict:
    for _ in range(warmup):
        step(batch)
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.reset_peak_memory_stats()
    profiled = 3
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(profiled):
            step(batch)
        sync(device)
    names = [e.name for e in prof.events()]
    row = {"ms": 1e3 * statistics.median(times),
           "aten_ops": sum(n.startswith("aten::") for n in names) / profiled,
           "host_reads": sum(n == "aten::_local_scalar_dense" for n in names) / profiled}
    if device.type == "cuda":
        row["launches"] = sum(n in LAUNCH_EVENTS for n in names) / profiled
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--clip-grad", type=float, default=0.0)
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from videomae.data.synthetic import make_synthetic_dataset
    from videomae.engine.distributed import init_distributed

    _, device = init_distributed()
    tmp = tempfile.mkdtemp(prefix="engine_step_")
    data = os.path.join(tmp, "data")
    make_synthetic_dataset(data, videos_per_class=1, val_per_class=0, num_frames=8, height=32, width=32)
    rows = []
    for precision in args.precisions.split(","):
        cfg = config(args, os.path.join(tmp, "plain"), data, 0, precision)
        batch = batch_for(cfg, device)
        contenders = [("plain", lambda cfg=cfg: plain_contender(cfg, device))]
        for stage in map(int, args.stages.split(",")):
            cfg_s = config(args, os.path.join(tmp, f"zero{stage}_{precision}"), data, stage, precision)
            contenders.append((f"engine ZeRO-{stage}", lambda cfg=cfg_s: engine_contender(cfg, device)))
        plain_ms = None
        for name, build in contenders:
            step, model, task = build()
            row = {"precision": precision, "step": name, **measure(step, batch, device, args.warmup, args.steps)}
            plain_ms = plain_ms or row["ms"]
            row["vs_plain"] = row["ms"] / plain_ms
            peak = peak_flops(device, precision)
            if peak:
                (inputs, kwargs) = task.flop_inputs(model, device)
                flops = train_flops_per_clip(model, inputs, kwargs)
                row["mfu"] = flops * cfg.TRAIN.BATCH_SIZE / (row["ms"] / 1e3) / peak
            rows.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            del step, model, task
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"\n{args.size} {args.frames}x{args.img_size}x{args.img_size}, patch {args.patch}, batch {args.batch}, "
          f"tube 0.9, {device.type}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    header = "| precision | step | ms/step | vs plain | aten ops/step | ops vs plain | host reads/step |"
    extra = " launches/step | peak GiB | MFU |" if device.type == "cuda" else ""
    print(header + extra)
    print("|" + "---|" * (header.count("|") - 1 + extra.count("|")))
    plain_ops = {}
    for row in rows:
        plain_ops.setdefault(row["precision"], row["aten_ops"])
        line = (f"| {row['precision']} | {row['step']} | {row['ms']:.1f} | {row['vs_plain']:.2f}x | "
                f"{row['aten_ops']:.0f} | {row['aten_ops'] / plain_ops[row['precision']]:.2f}x | "
                f"{row['host_reads']:.0f} |")
        if device.type == "cuda":
            line += f" {row['launches']:.0f} | {row['peak_gib']:.1f} | {row.get('mfu', float('nan')):.1%} |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
