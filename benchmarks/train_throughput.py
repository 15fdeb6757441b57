"""End-to-end training throughput against its two ceilings, side by side in one run:

  - model-only: the Trainer's own step (`micro_step` + `end_step`) on a fixed synthetic uint8 batch
    of the training shape (same model, batch, precision, compile setting), no loader;
  - loader-only: the training loader as the Trainer builds it, drained as fast as it delivers;
  - end-to-end: `Trainer.fit` over --epochs whole epochs, the real training path.

It prints end-to-end / model-only, the share of time the step waited for data, the stall at each
epoch boundary (the first step of an epoch minus a steady step), and the memory (RSS) of the main process
and of the loader workers at each epoch.

    python benchmarks/train_throughput.py                       # on a GPU: ViT-B 16x224
    python benchmarks/train_throughput.py --demand 0.8          # CPU: a consumer asking 80% of the loader rate
    python benchmarks/train_throughput.py --consumer-ms 400 --repeats 4

`--consumer-ms N` (or `--demand F`: N such that the consumer asks F x the loader-only rate)
replaces the model step by a fixed wait, so the loader is tested against a GPU-sized demand on a
machine without a GPU. The corpus is generated (320x240 H.264, 300 frames, a keyframe every 250
frames, as downloaded Kinetics videos) unless --root points at a list.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

if not torch.cuda.is_available():  # before the engine picks its accelerator
    os.environ.setdefault("VIDEOMAE_DEVICE", "cpu")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import psutil  # noqa: E402

from videomae.data.synthetic import make_synthetic_dataset  # noqa: E402
from videomae.engine.config import load_config  # noqa: E402
from videomae.engine.data import build_dataset, build_train_loader  # noqa: E402


def loader_rss_mb(loader) -> tuple[float, float]:
    """RSS of the main process and summed over the loader's worker processes, MB."""
    iterator = getattr(loader.loader, "_iterator", None)
    workers = [psutil.Process(w.pid) for w in getattr(iterator, "_workers", []) if w.is_alive()]
    return psutil.Process().memory_info().rss / 2**20, sum(p.memory_info().rss for p in workers) / 2**20


def make_trainer_class(consumer_ms: float | None, marks: list, rss: list):
    from videomae.engine.tasks import PretrainTask
    from videomae.engine.trainer import Trainer

    class MeasuredTrainer(Trainer):
        """The Trainer with a clock at each micro-step (and, with --consumer-ms, a fixed wait as
        the model step)."""

        def micro_step(self, batch, micro):
            marks.append((self.epoch, self.step_in_epoch, time.perf_counter()))
            if self.step_in_epoch == 0 and micro == 0:
                rss.append(loader_rss_mb(self.loader))
            if consumer_ms is None:
                lr = super().micro_step(batch, micro)
            else:
                time.sleep(consumer_ms / 1000)
                self.stats.add(torch.zeros((), device=self.device))
                lr = 0.0
            marks[-1] += (time.perf_counter(),)
            return lr

    return MeasuredTrainer, PretrainTask


def model_only(trainer, batch: dict, steps: int, warmup: int) -> float:
    """Clips/s of the Trainer's step alone on one fixed batch."""
    accum = trainer.cfg.TRAIN.ACCUM_STEPS
    clips = batch["video"].shape[0] * accum
    for i in range(warmup + steps):
        if i == warmup:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        for micro in range(accum):
            trainer.micro_step(batch, micro)
        trainer.end_step()
    trainer.stats.read()  # the one host read: waits for the device
    return steps * clips / (time.perf_counter() - start)


def loader_only(cfg, epochs: float) -> tuple[float, float]:
    """(clips/s, seconds to the first batch) of the training loader drained without a consumer,
    over `epochs` epochs after the first batch."""
    dataset = build_dataset(cfg, "pretrain")
    loader, sampler = build_train_loader(cfg, dataset, 1, 0)
    try:
        loader.set_epoch(0, 0)
        start = time.perf_counter()
        clips, first, epoch = 0, None, 0
        n = int(epochs * sampler.steps_per_epoch * cfg.TRAIN.ACCUM_STEPS)
        got = 0
        while got <= n:
            for batch in loader:
                if first is None:
                    first = time.perf_counter()
                else:
                    clips += batch["video"].shape[0]
                got += 1
                if got > n:
                    break
            epoch += 1
            loader.set_epoch(epoch, 0)
        return clips / (time.perf_counter() - first), first - start
    finally:
        loader.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="a dataset root with train.csv (default: generate one)")
    parser.add_argument("--videos-per-class", type=int, default=6, help="generated: x 8 classes")
    parser.add_argument("--model", default="pretrain_videomae_base_patch16_224")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=None, help="per-process micro-batch (default 32 on a "
                        "GPU, 8 without)")
    parser.add_argument("--repeats", type=int, default=1, help="DATA.NUM_REPEATS (K)")
    parser.add_argument("--workers", type=int, default=None, help="default: cores - 1")
    parser.add_argument("--backend", default="decord")
    parser.add_argument("--precision", default=None, help="bf16 on a GPU, fp32 without")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model-steps", type=int, default=10)
    parser.add_argument("--loader-epochs", type=float, default=2.0)
    parser.add_argument("--consumer-ms", type=float, default=None, help="a fixed wait as the model step")
    parser.add_argument("--demand", type=float, default=None, help="consumer asking this share of the "
                        "loader-only rate (sets --consumer-ms)")
    parser.add_argument("overrides", nargs="*", help="further config overrides, KEY VALUE ...")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    batch = args.batch or (32 if cuda else 8)
    workers = args.workers if args.workers is not None else max((os.cpu_count() or 2) - 1, 1)
    precision = args.precision or ("bf16" if cuda else "fp32")

    if args.root:
        root = Path(args.root)
    else:
        root = Path(tempfile.gettempdir()) / f"videomae_train_bench_{args.videos_per_class}_300_250"
        make_synthetic_dataset(root, videos_per_class=args.videos_per_class, val_per_class=0, num_frames=300,
                               height=240, width=320, fps=30, keyint=250)
    out = Path(tempfile.mkdtemp(prefix="videomae_train_bench_"))
    overrides = ["DATA.DATASET", "custom", "DATA.ROOT", str(root), "DATA.LIST_DIR", str(root),
                 "DATA.SAMPLING_RATE", "4", "DATA.NUM_REPEATS", str(args.repeats), "DATA.NUM_WORKERS", str(workers),
                 "DATA.BACKEND", args.backend, "MODEL.NAME", args.model, "MODEL.NUM_FRAMES", str(args.frames),
                 "MODEL.IMG_SIZE", str(args.size), "MODEL.COMPILE", str(args.compile), "TRAIN.BATCH_SIZE", str(batch),
                 "TRAIN.EPOCHS", str(args.epochs), "TRAIN.CKPT_PERIOD", str(args.epochs + 1), "TRAIN.LOG_PERIOD", "1000",
                 "TRAIN.WARMUP_EPOCHS", "0", "DEEPSPEED.ZERO_STAGE", "0", "DEEPSPEED.PRECISION", precision,
                 "LOG.PROGRESS", "False", "LOG.TENSORBOARD", "False", "OUTPUT_DIR", str(out), *args.overrides]
    if args.consumer_ms is not None or args.demand is not None:   # the model is not run: keep it small
        overrides += ["MODEL.DEPTH", "1", "MODEL.DECODER_DEPTH", "1"]
    cfg = load_config("configs/demo/pretrain.yaml", overrides)
    clips_per_step = batch * args.repeats * cfg.TRAIN.ACCUM_STEPS

    loader_rate, first_batch = loader_only(cfg, args.loader_epochs)
    consumer_ms = args.consumer_ms
    if args.demand is not None:
        consumer_ms = 1000 * clips_per_step / (args.demand * loader_rate) / cfg.TRAIN.ACCUM_STEPS

    marks, rss = [], []
    trainer_cls, task_cls = make_trainer_class(consumer_ms, marks, rss)
    trainer = trainer_cls(cfg, task_cls(cfg))
    if consumer_ms is None:
        video = torch.randint(0, 256, (batch * args.repeats, 3, args.frames, args.size, args.size), dtype=torch.uint8)
        fake = {"video": video.pin_memory() if cuda else video, "label": torch.zeros(video.shape[0], dtype=torch.long),
                "index": torch.arange(video.shape[0])}
        model_rate = model_only(trainer, fake, args.model_steps, warmup=3)
        marks.clear()
        trainer.step = trainer.step_in_epoch = 0
        ceiling_name = "model-only"
    else:
        model_rate = 1000 * clips_per_step / (consumer_ms * cfg.TRAIN.ACCUM_STEPS)
        ceiling_name = f"demand ({consumer_ms:.0f} ms/micro-step)"

    start = time.perf_counter()
    trainer.fit()
    # from the first micro-step on: the start-up fill is reported as loader-only's first batch
    end = marks[-1][3]
    e2e = len(marks) * batch * args.repeats / (end - marks[0][2])
    waits = [b[2] - a[3] for a, b in zip(marks, marks[1:])]
    busy = sum(m[3] - m[2] for m in marks[1:])
    intervals = [b[2] - a[2] for a, b in zip(marks, marks[1:])]
    steady = statistics.median(intervals)
    stalls = [intervals[i - 1] - steady for i, m in enumerate(marks) if i > 0 and m[1] == 0 and m[0] != marks[i - 1][0]]

    print(f"{len(trainer.train_set)} videos (320x240 H.264, keyframe every 250 frames), {args.frames}x{args.size}, "
          f"batch {batch} x K={args.repeats}, {workers} workers, {args.backend}, {precision}, "
          f"{trainer.device.type}, {args.epochs} epochs of {trainer.steps_per_epoch} steps")
    print(f"  loader-only      {loader_rate:8.1f} clips/s  (first batch after {first_batch:.2f} s)")
    print(f"  {ceiling_name:<16} {model_rate:8.1f} clips/s")
    print(f"  end-to-end       {e2e:8.1f} clips/s  = {e2e / model_rate:.2f} x {ceiling_name.split(' (')[0]}"
          f", {e2e / loader_rate:.2f} x loader-only")
    print(f"  data wait        {sum(waits) / (sum(waits) + busy):.1%} of the step loop")
    print(f"  epoch-boundary stall (s, first step of an epoch minus a steady {steady:.3f} s): "
          + ", ".join(f"{s:+.3f}" for s in stalls))
    print("  RSS at each epoch start, MB, main process / workers: " + ", ".join(f"{m:.0f}/{w:.0f}" for m, w in rss)
          + (f"  (workers last / first {rss[-1][1] / rss[0][1]:.2f})" if rss and rss[0][1] else ""))
    print(f"  wall {time.perf_counter() - start:.1f} s, outputs in {out}")
    trainer.loader.shutdown()


if __name__ == "__main__":
    main()
