"""Convert checkpoints between official VideoMAE / VideoMAE V2, MAE-ST, HF transformers and ours.

    # any supported checkpoint -> our model.pt (official key names), with a load report
    python tools/convert_checkpoint.py --src vit_b_k400_pretrain.pth --model pretrain_videomae_base_patch16_224 \
        --out vit_b.pt
    # -> a HF transformers folder (VideoMAEForPreTraining / VideoMAEForVideoClassification)
    python tools/convert_checkpoint.py --src runs/ssv2_ft/model.pt --model videomae_vit_base_patch16_224 \
        --to hf --out hf_ssv2_b
    # a HF folder -> ours
    python tools/convert_checkpoint.py --src hf_ssv2_b --model videomae_vit_base_patch16_224 --out vit_b_ssv2.pt

The model follows the checkpoint: learned separable position tables replace the sinusoid, a cls
token (MAE-ST) gives the model one (`--drop-cls-token` drops it instead, changing the encoder's
outputs), a head keeps its pooling (MAE-ST's mean of tokens 1:). A classifier keeps the checkpoint's
trained head and its class count. `--num-classes` naming
another count is refused (exit code 2) unless `--new-head` asks for a fresh, untrained head.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import videomae  # noqa: E402,F401
from videomae.cli import UsageError, run_tool  # noqa: E402
from videomae.convert import CheckpointError, load_checkpoint, open_checkpoint  # noqa: E402
from videomae.convert.hf import export_hf  # noqa: E402
from videomae.engine.checkpoint import save_model_file  # noqa: E402
from videomae.engine.config import model_hint, our_models  # noqa: E402
from videomae.models.factory import create_model  # noqa: E402


def head_classes(args, checkpoint) -> int:
    """The classifier's class count: the checkpoint's trained head unless a fresh head is asked for."""
    trained = checkpoint.num_classes
    if trained is None:   # pretraining / encoder-only: the head is new either way (the report says so)
        return args.num_classes or 400
    if args.new_head:
        return args.num_classes or trained
    if args.num_classes not in (None, trained):
        raise UsageError(f"--num-classes {args.num_classes}, but {args.src} has a trained {trained}-class head: "
                         f"leave --num-classes out to keep it, or add --new-head to replace it by an untrained "
                         f"{args.num_classes}-class head")
    return trained


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="file or folder")
    parser.add_argument("--model", required=True, help="registered model name the weights are for")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classifier models: default the checkpoint's trained head (400 when it has none); "
                             "another count than the head's needs --new-head")
    parser.add_argument("--new-head", action="store_true",
                        help="replace the checkpoint's trained head by a fresh, untrained one")
    parser.add_argument("--drop-cls-token", action="store_true",
                        help="a checkpoint with a cls token (MAE-ST) into a model without one; this changes the "
                             "encoder's outputs (by default the model gets a cls token, as the checkpoint's had)")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--tubelet-size", type=int, default=2)
    parser.add_argument("--to", choices=["ours", "hf"], default="ours")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    models = our_models()
    if args.model not in models:
        raise UsageError(f"--model {args.model!r} is not one of our models{model_hint(args.model)}")
    patch = models[args.model][1]
    if args.img_size % patch or args.num_frames % args.tubelet_size:
        raise UsageError(f"--img-size {args.img_size} must be a multiple of {args.model}'s patch size {patch} and "
                         f"--num-frames {args.num_frames} a multiple of --tubelet-size {args.tubelet_size}")
    kwargs = dict(num_frames=args.num_frames, img_size=args.img_size, tubelet_size=args.tubelet_size)
    try:
        checkpoint = open_checkpoint(args.src)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if checkpoint.has_cls_token and not args.drop_cls_token:   # the model follows the checkpoint
        kwargs["cls_token"] = True
    if models[args.model][0] == "classifier":
        kwargs["num_classes"] = head_classes(args, checkpoint)
        kwargs["pool"] = checkpoint.pool or "mean"
    elif args.num_classes is not None or args.new_head:
        raise UsageError(f"--num-classes / --new-head apply to classifier models (videomae_vit_*), not {args.model}")
    model = create_model(args.model, **kwargs)
    try:
        report = load_checkpoint(model, checkpoint, new_head=args.new_head, drop_cls_token=args.drop_cls_token)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report)
    if args.to == "hf":
        print(f"HF transformers folder: {export_hf(model, args.out)}")
    else:
        extra = {"source": os.path.abspath(args.src), "model_name": args.model}
        if hasattr(model, "pool"):   # how the head pools is not in the weights: stored for tools/test.py
            extra["pool"] = model.pool
        save_model_file(model.state_dict(), args.out, extra)
        print(f"weights: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
