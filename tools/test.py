"""Multi-view test of a fine-tuned checkpoint: softmax averaged over clips x crops per video.

    python tools/test.py --checkpoint runs/ssv2_ft/model.pt --out runs/ssv2_ft/test
    torchrun --nproc_per_node 8 tools/test.py --config configs/finetune/ssv2_vit_b.yaml --checkpoint official.pth

Our fine-tuned model.pt files carry their config (data lists, frames, views); other checkpoints need
`--config`. KEY VALUE pairs override either. A stored config is read as data: its IMPORTS are not
imported (name a plugin the model needs on the command line: IMPORTS my_plugin.py) and its
OUTPUT_DIR is not used.

Writes test_predictions.csv, test_per_class.csv, test_confusion.png and test_metrics.json to
`--out` (or OUTPUT_DIR given on the command line), else next to the checkpoint. A pretraining
checkpoint is refused: its head was never trained. The class count is the checkpoint's: a config
naming another count (MODEL.NUM_CLASSES, or DATA.NUM_CLASSES when that is 0) is refused with exit
code 2, never met by replacing the trained head. A cls token and the head's pooling follow the
checkpoint where it says (MAE-ST's fine-tuned files do; MODEL.CLS_TOKEN / MODEL.POOL are set and printed). A val/test video that fails to load stops
the test with its list file:line; `--skip-bad-videos` (DATA.EVAL_SKIP_BAD True) skips such videos
and lists them in test_metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomae.cli import run_tool  # noqa: E402
from videomae.convert import CheckpointError, load_checkpoint, open_checkpoint  # noqa: E402
from videomae.engine.config import ConfigError, checkpoint_config  # noqa: E402


def take_class_count(cfg, checkpoint, configured: int | None):
    """The model gets the class count of the checkpoint's trained head. A config that names another
    count is refused: the head would be replaced by an untrained one and the test would score noise."""
    trained = checkpoint.num_classes
    if trained is None or configured == trained:
        return cfg
    if configured:
        raise ConfigError(f"{checkpoint.name} has a trained {trained}-class head but the config says {configured} "
                          "classes (MODEL.NUM_CLASSES, or DATA.NUM_CLASSES when that is 0): give the config it "
                          f"was fine-tuned with, or MODEL.NUM_CLASSES {trained}")
    cfg.defrost()
    cfg.MODEL.NUM_CLASSES = trained
    cfg.freeze()
    return cfg


def follow_checkpoint_model(cfg, checkpoint):
    """The model is built as the checkpoint's was, where the file says: a cls token (MAE-ST) and
    how its head pools (MAE-ST's tokens 1:, token 0, or what our converter stored). Printed when
    that changes the config."""
    wanted = {"CLS_TOKEN": checkpoint.has_cls_token}
    if checkpoint.pool is not None:
        wanted["POOL"] = checkpoint.pool
    changed = {key: value for key, value in wanted.items() if cfg.MODEL[key] != value}
    if changed:
        cfg.defrost()
        cfg.MODEL.update(changed)
        cfg.freeze()
        print("model as the checkpoint's: " + ", ".join(f"MODEL.{k} {v}" for k, v in changed.items()))
    return cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="default: the config the fine-tuned model.pt carries")
    parser.add_argument("--checkpoint", required=True,
                        help="fine-tuned model.pt, run folder, DeepSpeed checkpoint folder, or foreign file")
    parser.add_argument("--out", help="folder for the reports (default: the checkpoint's folder)")
    parser.add_argument("--skip-bad-videos", action="store_true",
                        help="skip videos that fail to load (DATA.EVAL_SKIP_BAD True); they are counted and "
                             "listed in test_metrics.json")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not os.path.exists(args.checkpoint):
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    if args.skip_bad_videos:
        args.overrides = [*args.overrides, "DATA.EVAL_SKIP_BAD", "True"]
    try:
        cfg = checkpoint_config(args.checkpoint, args.config,
                                [*args.overrides, *(["OUTPUT_DIR", args.out] if args.out else [])])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if cfg.TASK == "pretrain":  # its head was never trained: say so before building a classifier
        if args.config:
            raise ConfigError(f"{args.config} is a pretraining config (TASK pretrain); tools/test.py needs the "
                              "fine-tuning config of the checkpoint")
        raise CheckpointError(f"{args.checkpoint} is a pretraining checkpoint (its config says TASK pretrain): "
                              "fine-tune it first (tools/train.py --config configs/finetune/... MODEL.PRETRAINED "
                              f"{args.checkpoint}), then test that")
    from videomae.engine.data import class_names, model_classes

    class_names(cfg, model_classes(cfg))   # a classes.json naming fewer classes: say so before any work
    checkpoint = open_checkpoint(args.checkpoint)   # read once: its head says how many classes
    configured = model_classes(cfg)
    cfg = take_class_count(cfg, checkpoint, configured)
    cfg = follow_checkpoint_model(cfg, checkpoint)
    if model_classes(cfg) != configured:   # taken from the checkpoint: classes.json must name them too
        class_names(cfg, model_classes(cfg))

    import torch

    from videomae.data.annotations import AnnotationError
    from videomae.engine.classification import build_classifier_from_cfg
    from videomae.engine.data import build_dataset
    from videomae.engine.distributed import init_distributed
    from videomae.engine.evaluation import predict_dataset, test_report

    info, device = init_distributed()
    model = build_classifier_from_cfg(cfg)
    try:
        report = load_checkpoint(model, checkpoint, require_classifier=True)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if info.is_main:
        print(report)
    model.to(device).eval()
    try:
        dataset = build_dataset(cfg, "test")
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        probs = predict_dataset(model, cfg, dataset, info.world_size, info.rank, device)
    metrics = test_report(cfg, dataset, probs, cfg.OUTPUT_DIR, info.is_main)
    if info.is_main:
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
