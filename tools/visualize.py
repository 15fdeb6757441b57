"""What a pretrained VideoMAE reconstructs: one picture per video, every masking strategy asked for
side by side on the same clip, with each strategy's masked-cube loss.

    python tools/visualize.py --checkpoint runs/ssv2_pretrain/model.pt --video a.webm b.webm \
        --masks tube,random,frame --out pictures/ [MASK.RATIO 0.75 ...]
    python tools/visualize.py --config configs/pretrain/k400_vit_b.yaml --checkpoint official.pth ...

Our model.pt files carry their config, read as data (its IMPORTS are not imported: name a plugin on
the command line, IMPORTS my_plugin.py); other checkpoints need `--config`. The clip is the centre
dense clip of each video (the config's frames and sampling rate), short side resized and
centre-cropped to the model's size. A model trained on pixels (MODEL.TARGET pixel, pixel_raw,
frame_diff) shows targets and predictions; one trained on HOG or teacher features shows each
masked cube's loss instead (a teacher target loads MODEL.TEACHER_CHECKPOINT). The checkpoint must hold the decoder (ours, official VideoMAE
pretraining files, HF `VideoMAEForPreTraining`); an encoder-only or fine-tuned checkpoint
cannot reconstruct and is refused. Writes `<out>/<video name>.png` (default out: `reconstructions`
next to the checkpoint, or under OUTPUT_DIR given on the command line) and prints one line per
video and strategy.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomae.cli import run_tool  # noqa: E402
from videomae.engine.config import ConfigError, checkpoint_config  # noqa: E402

DECODER_PARTS = ("decoder", "encoder_to_decoder", "mask_token")


def read_center_clip(path: str, cfg):
    """uint8 (1, C, T, H, W): the clip a single-view evaluation would see."""
    import torch

    from videomae.data.decoding import open_video
    from videomae.data.sampling import dense_test_clips
    from videomae.data.transforms import eval_transform

    with open_video(path, cfg.DATA.BACKEND, cfg.DATA.DECODE_SHORT_SIDE or None) as reader:
        indices = dense_test_clips(len(reader), cfg.MODEL.NUM_FRAMES, cfg.DATA.SAMPLING_RATE, num_clips=1)[0]
        frames = torch.from_numpy(reader.get_frames(indices)).permute(0, 3, 1, 2)   # T, C, H, W
    clip = eval_transform(cfg.MODEL.IMG_SIZE)(frames)
    return clip.permute(1, 0, 2, 3)[None].contiguous()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the pretraining config the checkpoint was made with "
                                         "(default: the one our model.pt files carry)")
    parser.add_argument("--checkpoint", required=True, help="pretraining model.pt, run folder, or foreign file")
    parser.add_argument("--video", required=True, nargs="+", help="one or more video files")
    parser.add_argument("--masks", default="", help="comma-separated strategies (default: the config's MASK.TYPE)")
    parser.add_argument("--out", help="folder for the pictures (default: reconstructions/ next to the checkpoint)")
    parser.add_argument("--frames", type=int, default=4, help="frames shown per row")
    parser.add_argument("--seed", type=int, default=0, help="seeds every mask, so strategies compare fairly")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="KEY VALUE pairs, e.g. MASK.RATIO 0.75")
    args = parser.parse_args(argv)
    from videomae.convert import CheckpointError, load_checkpoint

    if not os.path.exists(args.checkpoint):
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    try:
        cfg = checkpoint_config(args.checkpoint, args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if cfg.TASK != "pretrain":  # a classifier has no decoder: say so before building a pretraining model
        if args.config:
            raise ConfigError(f"{args.config} is a {cfg.TASK} config (MODEL.NAME {cfg.MODEL.NAME}); reconstructing "
                              "needs the pretraining config of the checkpoint")
        raise CheckpointError(f"{args.checkpoint} is a fine-tuned classifier (its config says TASK {cfg.TASK}): "
                              "it has no decoder to reconstruct with; give a pretraining checkpoint")

    import torch

    from videomae.data.decoding import VideoDecodeError
    from videomae.engine.plots import plot_reconstruction
    from videomae.engine.tasks import PretrainTask, normalize_on_device
    from videomae.masking import MASKING_REGISTRY, build_masking

    names = [n.strip() for n in (args.masks or cfg.MASK.TYPE).split(",") if n.strip()]
    unknown = [n for n in names if n not in MASKING_REGISTRY]
    if unknown:
        print(f"error: unknown masking strategy {unknown}; choose from {sorted(MASKING_REGISTRY)}", file=sys.stderr)
        return 2
    try:
        task = PretrainTask(cfg)
        task.log = lambda line: None   # its masking line is about MASK.TYPE; ours are printed below
        model = task.build_model()
        report = load_checkpoint(model, args.checkpoint)
        untrained = [k for k in report.new if k.startswith(DECODER_PARTS)]
        if untrained:
            raise CheckpointError(f"{args.checkpoint} has no decoder ({len(untrained)} tensors missing, e.g. "
                                  f"{untrained[0]}): only a pretraining checkpoint can reconstruct")
        print(report)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model.float().eval()
    target = getattr(model, "target", None)
    if target is not None and not target.pixel_layout:
        print(f"target {target.name}: no pixels to reconstruct; the pictures show each masked cube's loss")
    out_dir = args.out or os.path.join(cfg.OUTPUT_DIR, "reconstructions")
    strategies = {name: build_masking(name, cfg.MASK.RATIO) for name in names}
    os.makedirs(out_dir, exist_ok=True)
    for path in args.video:
        try:
            video = normalize_on_device(read_center_clip(path, cfg), "cpu")
        except VideoDecodeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        masks = {name: make(1, model.grid_size, device="cpu", generator=torch.Generator().manual_seed(args.seed))
                 for name, make in strategies.items()}
        out_png = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        losses = plot_reconstruction(model, video, masks, out_png, frames=args.frames)
        for name, loss in losses.items():
            visible = int((~masks[name]).sum())
            print(f"{path}: {name:<12} {visible:>5} of {masks[name].shape[1]} cubes visible, loss {loss:.4f}")
        print(f"  -> {out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
