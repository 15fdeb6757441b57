"""The CPU demo (`make demo`): synthetic videos -> pretrain a tiny VideoMAE once -> fine-tune it with
several seeds, and train the same classifier from scratch with the same seeds and budget -> mean and
range of both starts' top-1, a verdict that respects the spread between seeds, pictures, summary.

    python tools/demo.py [--out demo_runs] [--seeds 0,1,2] [--quick] [KEY VALUE ...]

KEY VALUE pairs override every run's config (e.g. `TRAIN.BATCH_SIZE 4` on a small machine).

Uses a GPU when there is one. On a CPU, a seed's two fine-tuning runs (pretrained and scratch) run
side by side as two `tools/train.py` processes with half the cores each: a tiny model's step does
not use two cores fully, so on 2 cores a pair took 310 s side by side against ~350 s one after the
other (15 epochs each).
Writes demo_runs/pretrain/, demo_runs/{finetune,scratch}/seed<N>/ (checkpoints, model.pt,
metrics.jsonl, train.log, TensorBoard logs, test predictions and confusion matrices),
loss_curve.png, reconstruction.png, finetune_seeds.png and summary.md. Run again, it resumes or
reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videomae.cli import UsageError, run_tool  # noqa: E402
from videomae.compare.report import commit, range_verdict  # noqa: E402
from videomae.data.synthetic import ensure_demo_dataset  # noqa: E402
from videomae.engine.config import load_config  # noqa: E402
from videomae.engine.distributed import use_cuda  # noqa: E402
from videomae.engine.logs import read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTS = ("pretrained", "scratch")


def run_overrides(out_dir: str, data_dir: str, quick: bool, *extra: str) -> list[str]:
    overrides = ["OUTPUT_DIR", out_dir, "DATA.ROOT", data_dir, "DATA.LIST_DIR", data_dir, *extra]
    if use_cuda():
        overrides += ["DEEPSPEED.PRECISION", "bf16"]
    if quick:
        overrides += ["TRAIN.EPOCHS", "1"]
    return overrides


def run(config: str, out_dir: str, data_dir: str, quick: bool, *extra: str):
    """One training run in this process, through the same loop `tools/train.py` uses."""
    from videomae.engine.classification import ClassificationTask
    from videomae.engine.tasks import PretrainTask
    from videomae.engine.trainer import Trainer

    cfg = load_config(os.path.join(ROOT, config), run_overrides(out_dir, data_dir, quick, *extra))
    task = PretrainTask(cfg) if cfg.TASK == "pretrain" else ClassificationTask(cfg)
    trainer = Trainer(cfg, task)
    start = time.time()
    result = trainer.fit()
    return cfg, trainer, result, time.time() - start


# what makes videomae.engine.distributed.detect see a launcher's rank
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "SLURM_PROCID", "SLURM_STEP_ID")


class _Stop(KeyboardInterrupt):
    """SIGTERM reached the demo while its fine-tuning runs were going."""


def _raise_stop(signum, frame):
    raise _Stop


def run_log(log_path: str, offset: int) -> list[str]:
    """The lines tools/train.py wrote to its log from `offset` on (this attempt only)."""
    with open(log_path, errors="replace") as handle:
        handle.seek(offset)
        return handle.read().splitlines()


def final_record(lines: list[str]) -> dict:
    """The last JSON line tools/train.py printed (status, step, test top-1 ...), {} if none."""
    record = {}
    for line in lines:
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                pass
    return record


def run_side_by_side(jobs: dict[str, tuple[str, list[str]]]) -> dict[str, tuple[dict, float]]:
    """Start `tools/train.py ARGS` for every job (name -> (run folder, ARGS)) at once, each a single
    process with its own rendezvous port, an equal share of the CPU cores and its output appended to
    the run folder's train.log; wait for all. Returns each job's final record and wall seconds.

    A failed run stops the demo with the run's reason and exit code (the others are stopped with a
    checkpoint). Ctrl-C or SIGTERM reaches the runs once, through this process (they run in their
    own sessions, away from the terminal's signals): each checkpoints and stops, and the demo exits
    75; the same command again resumes them."""
    from videomae.cli import EXIT_PREEMPTED
    from videomae.engine.distributed import free_port

    # the pretraining's Trainer took SIGINT and SIGTERM for its own checkpoints: take them back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_stop)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    running = {}
    try:
        for name, (out_dir, args) in jobs.items():
            os.makedirs(out_dir, exist_ok=True)
            log_path = os.path.join(out_dir, "train.log")
            offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
            # a single process with its own port: what a launcher (torchrun, srun) exported is not for it
            env = {key: value for key, value in os.environ.items() if key not in _LAUNCHER_VARIABLES}
            env.update(MASTER_PORT=str(free_port()), OMP_NUM_THREADS=str(max(1, cores // len(jobs))),
                       PYTHONUNBUFFERED="1")
            with open(log_path, "a") as log:
                proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train.py"), *args],
                                        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            running[name] = (proc, log_path, offset, time.time())
        results = {}
        while len(results) < len(running):
            for name, (proc, log_path, offset, began) in running.items():
                if name in results or proc.poll() is None:
                    continue
                lines = run_log(log_path, offset)
                record = final_record(lines)
                if proc.returncode != 0 or record.get("status") != "finished":
                    code = proc.returncode if proc.returncode > 0 else 128 - proc.returncode if proc.returncode else 1
                    said = [line.strip().removeprefix("error: ") for line in lines
                            if line.startswith(("error:", "config error:"))]
                    last = [line.strip() for line in lines if line.strip()]
                    reason = (said or last or [f"tools/train.py exited with {proc.returncode}"])[-1]
                    print(f"error: the {name} run failed (exit {code}): {reason} (log: {log_path})", file=sys.stderr)
                    raise SystemExit(code)
                results[name] = (record, time.time() - began)
                print(f"      {name}: top-1 {record['test_top1']:.1f} ({results[name][1]:.0f} s)")
            time.sleep(0.2)
        return results
    except KeyboardInterrupt:             # Ctrl-C, or SIGTERM (_Stop)
        print("stopping: the fine-tuning runs checkpoint and stop; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    finally:
        for proc, _, _, _ in running.values():
            if proc.poll() is None:
                proc.terminate()    # SIGTERM, once: the run checkpoints and exits; a rerun resumes it
        for proc, _, _, _ in running.values():
            proc.wait()


def reconstruction_picture(cfg, trainer, out_png: str) -> str:
    from videomae.engine.data import build_dataset
    from videomae.engine.plots import plot_reconstruction
    from videomae.engine.tasks import normalize_on_device
    from videomae.masking import build_masking

    val = build_dataset(cfg, "val")
    item = val[3]
    model = trainer.engine.module
    video = normalize_on_device(item["video"][None], trainer.device)
    mask = build_masking(cfg.MASK.TYPE, cfg.MASK.RATIO)(1, model.grid_size, device=trainer.device,
                                                        generator=torch.Generator(trainer.device).manual_seed(0))
    plot_reconstruction(model.float(), video, {cfg.MASK.TYPE: mask}, out_png)
    return out_png


def seeds_picture(seeds: list[int], top1: dict, out_png: str) -> str:
    """Each seed's top-1 per start (a dot each, paired seeds joined by a line) and the means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=110)
    for i, seed in enumerate(seeds):
        ax.plot([0, 1], [top1["pretrained"][i], top1["scratch"][i]], "o-", color="grey", alpha=0.6, ms=5,
                label="one seed (paired)" if i == 0 else None)
    for x, start in enumerate(STARTS):
        ax.hlines(statistics.fmean(top1[start]), x - 0.25, x + 0.25, color="black", lw=2,
                  label="mean" if x == 0 else None)
    ax.set_xticks([0, 1], list(STARTS))
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"fine-tuning, {len(seeds)} seeds", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: give one or more distinct integers, e.g. --seeds 0,1,2")
    return seeds


def fine_tune_table(seeds: list[int], results: dict, seconds: dict) -> list[str]:
    top1 = {start: [results[start][s]["test_top1"] for s in seeds] for start in STARTS}
    top5 = {start: [results[start][s]["test_top5"] for s in seeds] for start in STARTS}
    lines = ["| start | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | range | top-5 mean | time per run |",
             "|---|" + "---|" * (len(seeds) + 4)]
    for start in STARTS:
        lines.append(f"| {start} | " + " | ".join(f"{v:.1f}" for v in top1[start])
                     + f" | **{statistics.fmean(top1[start]):.1f}** | {min(top1[start]):.1f}-{max(top1[start]):.1f}"
                     f" | {statistics.fmean(top5[start]):.1f} | {statistics.fmean(seconds[start]):.0f} s |")
    diffs = [a - b for a, b in zip(top1["pretrained"], top1["scratch"])]
    lines += ["", "Paired difference (pretrained - scratch, same seed): "
              + ", ".join(f"{d:+.1f}" for d in diffs) + f"; mean {statistics.fmean(diffs):+.1f}, range "
              f"{min(diffs):+.1f} to {max(diffs):+.1f}.", "",
              "**" + range_verdict("pretrained", top1["pretrained"], "scratch", top1["scratch"]) + "**"]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_runs"))
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "synthetic"))
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, each for both starts (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="one epoch, for a smoke test")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs for every run")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    began = time.time()

    print(f"[1/4] synthetic videos -> {args.data}")
    info = ensure_demo_dataset(args.data)
    print(f"      {info['train']} train / {info['val']} val clips, {info['classes']} classes, "
          f"{info['size'][1]}x{info['size'][0]}, {info['frames']} frames")

    print("[2/4] pretraining the tiny VideoMAE once (configs/demo/pretrain.yaml)")
    cfg, trainer, result, seconds = run("configs/demo/pretrain.yaml", os.path.join(args.out, "pretrain"),
                                        args.data, args.quick, *args.overrides)
    run_dir = cfg.OUTPUT_DIR
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"), "train")
    from videomae.engine.plots import plot_loss_curve

    curve = plot_loss_curve(os.path.join(run_dir, "metrics.jsonl"), os.path.join(args.out, "loss_curve.png"))
    recon = reconstruction_picture(cfg, trainer, os.path.join(args.out, "reconstruction.png"))
    del trainer

    print(f"[3/4] fine-tuning it, and the same classifier from scratch, seeds {', '.join(map(str, seeds))}")
    weights = {"pretrained": os.path.join(run_dir, "model.pt"), "scratch": ""}
    folders = {"pretrained": "finetune", "scratch": "scratch"}
    config = os.path.join(ROOT, "configs/demo/finetune.yaml")
    results, walls = {s: {} for s in STARTS}, {s: [] for s in STARTS}
    for seed in seeds:
        # a seed's pair side by side on a CPU (one after the other on a GPU): an interrupted demo
        # leaves whole pairs
        jobs = {}
        for start in STARTS:
            out_dir = os.path.join(args.out, folders[start], f"seed{seed}")
            jobs[f"{start}, seed {seed}"] = (out_dir, ["--config", config, *run_overrides(
                out_dir, args.data, args.quick, *args.overrides, "MODEL.PRETRAINED", weights[start], "SEED", str(seed))])
        print(f"      {' and '.join(jobs)} (logs: <run folder>/train.log)")
        batches = [jobs] if not use_cuda() else [{name: job} for name, job in jobs.items()]
        done = {name: value for batch in batches for name, value in run_side_by_side(batch).items()}
        for start in STARTS:
            record, wall = done[f"{start}, seed {seed}"]
            results[start][seed] = record
            walls[start].append(wall)
    ft_cfg = load_config(config, run_overrides(args.out, args.data, args.quick, *args.overrides))

    print("[4/4] pictures and summary")
    top1 = {start: [results[start][s]["test_top1"] for s in seeds] for start in STARTS}
    dots = seeds_picture(seeds, top1, os.path.join(args.out, "finetune_seeds.png"))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    device = torch.cuda.get_device_name() if use_cuda() else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    rel = lambda path: os.path.relpath(path, args.out)  # noqa: E731  (paths inside the demo's folder)
    steps = results["pretrained"][seeds[0]]["step"]
    summary = "\n".join([
        "# VideoMAE demo",
        "",
        f"- commit: {commit()}; {device}; torch {torch.__version__}; whole demo {time.time() - began:.0f} s",
        f"- data: {info['train']} synthetic training clips, {info['val']} test clips, {info['classes']} "
        "temporal-order classes",
        f"- model: `{cfg.MODEL.NAME}`, {cfg.MODEL.NUM_FRAMES}x{cfg.MODEL.IMG_SIZE}x{cfg.MODEL.IMG_SIZE} clips, "
        f"{cfg.MASK.TYPE} masking {cfg.MASK.RATIO:.0%}",
        f"- pretraining (once, SEED {cfg.SEED}): {result['step']} steps in {seconds:.0f} s; loss {first:.4f} at "
        f"step {rows[0]['step']} -> {last:.4f} at step {rows[-1]['step']}",
        f"- files (under `{args.out}`): weights `{rel(os.path.join(run_dir, 'model.pt'))}`, logs "
        f"`{rel(os.path.join(run_dir, 'metrics.jsonl'))}`, pictures `{rel(curve)}`, `{rel(recon)}`, `{rel(dots)}`",
        "",
        "## Fine-tuning: does pretraining help?",
        "",
        f"The same classifier, data and budget ({steps} steps) from the pretrained weights and from scratch, "
        f"with {len(seeds)} seeds each (a seed fixes data order, head initialisation and augmentation, the "
        "same for both starts); test top-1 (%) over "
        f"{ft_cfg.DATA.TEST_NUM_CLIPS} clips x {ft_cfg.DATA.TEST_NUM_CROPS} crops per video. A difference counts only "
        "where the two ranges over seeds do not overlap." + (
            "" if use_cuda() else " A seed's two runs ran side by side, each with half the CPU cores "
            "(the time per run is that shared wall time)."),
        "",
        *fine_tune_table(seeds, results, walls),
        "",
    ])
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(summary)
    print(summary)
    print(json.dumps({"pretrain_loss_first": first, "pretrain_loss_last": last, "pretrain_steps": result["step"],
                      "seeds": seeds, "pretrained_top1": top1["pretrained"], "scratch_top1": top1["scratch"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
