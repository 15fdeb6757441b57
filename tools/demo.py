"""The CPU demo (`make demo`): synthetic videos -> pretrain a tiny VideoMAE -> fine-tune it, and
train the same classifier from scratch with the same budget -> both top-1 figures, pictures, summary.

    python tools/demo.py [--out demo_runs] [--quick] [KEY VALUE ...]

KEY VALUE pairs override all three runs' configs (e.g. `TRAIN.BATCH_SIZE 4` on a small machine).

Uses a GPU when there is one. Writes demo_runs/{pretrain,finetune,scratch}/ (checkpoints, model.pt,
metrics.jsonl, TensorBoard logs, test predictions and confusion matrices), loss_curve.png,
reconstruction.png and summary.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videomae.cli import run_tool  # noqa: E402
from videomae.data.synthetic import ensure_demo_dataset  # noqa: E402
from videomae.engine.config import load_config  # noqa: E402
from videomae.engine.distributed import use_cuda  # noqa: E402
from videomae.engine.logs import read_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "demo_runs"))
    parser.add_argument("--data", default=os.path.join(ROOT, "data", "synthetic"))
    parser.add_argument("--quick", action="store_true", help="one epoch, for a smoke test")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs for every run")
    args = parser.parse_args(argv)

    print(f"[1/4] synthetic videos -> {args.data}")
    info = ensure_demo_dataset(args.data)
    print(f"      {info['train']} train / {info['val']} val clips, {info['classes']} classes, "
          f"{info['size'][1]}x{info['size'][0]}, {info['frames']} frames")

    print("[2/4] pretraining the tiny VideoMAE (configs/demo/pretrain.yaml)")
    cfg, trainer, result, seconds = run("configs/demo/pretrain.yaml", os.path.join(args.out, "pretrain"),
                                        args.data, args.quick, *args.overrides)
    run_dir = cfg.OUTPUT_DIR
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"), "train")

    print("[3/4] fine-tuning it, and the same classifier from scratch with the same budget")
    pretrained_weights = os.path.join(run_dir, "model.pt")
    _, _, finetuned, ft_seconds = run("configs/demo/finetune.yaml", os.path.join(args.out, "finetune"), args.data,
                                      args.quick, *args.overrides, "MODEL.PRETRAINED", pretrained_weights)
    _, _, scratch, sc_seconds = run("configs/demo/finetune.yaml", os.path.join(args.out, "scratch"), args.data,
                                    args.quick, *args.overrides, "MODEL.PRETRAINED", "")

    print("[4/4] pictures and summary")
    from videomae.engine.plots import plot_loss_curve

    curve = plot_loss_curve(os.path.join(run_dir, "metrics.jsonl"), os.path.join(args.out, "loss_curve.png"))
    recon = reconstruction_picture(cfg, trainer, os.path.join(args.out, "reconstruction.png"))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    summary = "\n".join([
        "# VideoMAE demo",
        "",
        f"- data: {info['train']} synthetic training clips, {info['classes']} temporal-order classes",
        f"- model: `{cfg.MODEL.NAME}`, {cfg.MODEL.NUM_FRAMES}x{cfg.MODEL.IMG_SIZE}x{cfg.MODEL.IMG_SIZE} clips, "
        f"{cfg.MASK.TYPE} masking {cfg.MASK.RATIO:.0%}",
        f"- training: {result['step']} steps in {rows[-1]['time'] - rows[0]['time']:.0f} s on "
        f"{trainer.device.type}",
        f"- loss: {first:.4f} at step {rows[0]['step']} -> {last:.4f} at step {rows[-1]['step']}",
        f"- weights: `{os.path.join(run_dir, 'model.pt')}`; logs: `{os.path.join(run_dir, 'metrics.jsonl')}`,"
        f" TensorBoard `{os.path.join(run_dir, 'tensorboard')}`",
        f"- pictures: `{curve}`, `{recon}`",
        "",
        "## Fine-tuning: does pretraining help?",
        "",
        f"Same classifier, same data, same {finetuned['step']} steps; test = 2 clips x 3 crops per video.",
        "One seed each: on 64 test videos another seed moved these figures by 6 to 17 points",
        "(`docs/demo.md` has two seeds per start).",
        "",
        "| start | top-1 | top-5 | time |",
        "|---|---|---|---|",
        f"| pretrained (above) | {finetuned['test_top1']:.1f} | {finetuned['test_top5']:.1f} | {ft_seconds:.0f} s |",
        f"| scratch | {scratch['test_top1']:.1f} | {scratch['test_top5']:.1f} | {sc_seconds:.0f} s |",
        "",
        f"Confusion matrices: `{os.path.join(args.out, 'finetune', 'test_confusion.png')}`, "
        f"`{os.path.join(args.out, 'scratch', 'test_confusion.png')}`.",
        "",
    ])
    with open(os.path.join(args.out, "summary.md"), "w") as handle:
        handle.write(summary)
    print(summary)
    print(json.dumps({"pretrain_loss_first": first, "pretrain_loss_last": last, "pretrain_steps": result["step"],
                      "finetuned_top1": finetuned["test_top1"], "scratch_top1": scratch["test_top1"]}))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
