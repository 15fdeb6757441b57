"""The CPU demo (`make demo`): synthetic videos -> pretrain a tiny VideoMAE once -> fine-tune it with
several seeds, and train the same classifier from scratch with the same seeds and budget -> mean and
range of both starts' top-1, a verdict that respects the spread between seeds, pictures, summary.

    python tools/demo.py [--out demo_runs] [--seeds 0,1,2] [--quick] [KEY VALUE ...]

KEY VALUE pairs override every run's config (e.g. `TRAIN.BATCH_SIZE 4` on a small machine).

Uses a GPU when there is one. Writes demo_runs/pretrain/, demo_runs/{finetune,scratch}/seed<N>/
(checkpoints, model.pt, metrics.jsonl, TensorBoard logs, test predictions and confusion matrices),
loss_curve.png, reconstruction.png, finetune_seeds.png and summary.md. Run again, it resumes or
reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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


def run(config: str, out_dir: str, data_dir: str, quick: bool, *extra: str):
    """One training run through the same loop `tools/train.py` uses."""
    from videomae.engine.classification import ClassificationTask
    from videomae.engine.tasks import PretrainTask
    from videomae.engine.trainer import Trainer

    overrides = ["OUTPUT_DIR", out_dir, "DATA.ROOT", data_dir, "DATA.LIST_DIR", data_dir, *extra]
    if use_cuda():
        overrides += ["DEEPSPEED.PRECISION", "bf16"]
    if quick:
        overrides += ["TRAIN.EPOCHS", "1"]
    cfg = load_config(os.path.join(ROOT, config), overrides)
    task = PretrainTask(cfg) if cfg.TASK == "pretrain" else ClassificationTask(cfg)
    trainer = Trainer(cfg, task)
    start = time.time()
    result = trainer.fit()
    return cfg, trainer, result, time.time() - start


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
    results, walls = {s: {} for s in STARTS}, {s: [] for s in STARTS}
    for seed in seeds:
        for start in STARTS:   # one seed's pair back to back: an interrupted demo leaves whole pairs
            print(f"      {start}, seed {seed}")
            ft_cfg, _, results[start][seed], wall = run(
                "configs/demo/finetune.yaml", os.path.join(args.out, folders[start], f"seed{seed}"), args.data,
                args.quick, *args.overrides, "MODEL.PRETRAINED", weights[start], "SEED", str(seed))
            walls[start].append(wall)

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
        "where the two ranges over seeds do not overlap.",
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
