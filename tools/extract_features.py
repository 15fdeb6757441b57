"""Mean-pooled clip features of a frozen encoder for every video of a list.

    python tools/extract_features.py --checkpoint runs/pretrain/model.pt --list lists/k400/val.csv \
        --out features/k400_val
    python tools/extract_features.py --config configs/finetune/k400_vit_b.yaml --checkpoint official.pth ...

Writes `<out>.npy` (videos x dim, float32; views averaged per video) and `<out>.csv` (row -> path,
label), nothing else. Works with pretraining or fine-tuned checkpoints: only the encoder is used.
Our model.pt files carry their config; it is read as data: its IMPORTS are not imported (name a
plugin the model needs on the command line: IMPORTS my_plugin.py).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomae.cli import run_tool  # noqa: E402


PRETRAIN_PREFIX, CLASSIFIER_PREFIX = "pretrain_videomae_", "videomae_vit_"   # the registered name pairs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="default: the config our model.pt carries")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--list", required=True, help="VideoMAE list (<path> <label>)")
    parser.add_argument("--out", required=True, help="output prefix: writes <out>.npy and <out>.csv")
    parser.add_argument("--views", choices=["center", "test"], default="center",
                        help="one centre view, or the config's clips x crops (averaged)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from tqdm import tqdm

    from videomae.convert import CheckpointError, load_checkpoint
    from videomae.engine.classification import build_classifier_from_cfg
    from videomae.engine.config import checkpoint_config
    from videomae.engine.data import build_dataset, build_eval_loader
    from videomae.engine.distributed import init_distributed
    from videomae.engine.host import to_numpy
    from videomae.engine.tasks import normalize_on_device

    if not os.path.exists(args.checkpoint):
        raise CheckpointError(f"checkpoint not found: {args.checkpoint}")
    cfg = checkpoint_config(args.checkpoint, args.config, [*args.overrides, "DATA.TEST_LIST", args.list,
                                                           "DATA.VAL_LIST", args.list, "DATA.LIST_DIR", ""])
    if cfg.MODEL.NAME.startswith(PRETRAIN_PREFIX):  # a pretraining run's config: the same encoder, as a classifier
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.NAME = CLASSIFIER_PREFIX + cfg.MODEL.NAME[len(PRETRAIN_PREFIX):]
        cfg.MODEL.NUM_CLASSES = 1  # a placeholder head: features come from before it
        cfg.freeze()
    info, device = init_distributed()
    model = build_classifier_from_cfg(cfg)
    try:
        print(load_checkpoint(model, args.checkpoint))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model.to(device).eval()
    dataset = build_dataset(cfg, "test" if args.views == "test" else "val")
    dataset.skip_bad = False   # every output row needs its video: a bad one stops with its list file:line
    loader = build_eval_loader(cfg, dataset, 1, 0)
    sums = np.zeros((len(dataset.records), model.embed_dim), dtype=np.float64)
    counts = np.zeros(len(dataset.records))
    with torch.no_grad():
        for batch in tqdm(loader, desc="features", unit="batch"):
            feats = to_numpy(model.forward_features(normalize_on_device(batch["video"], device)))
            for index, feat in zip(batch["index"].tolist(), feats):
                sums[index] += feat
                counts[index] += 1
    features = (sums / counts[:, None]).astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.save(f"{args.out}.npy", features)
    with open(f"{args.out}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "label"])
        for i, record in enumerate(dataset.records):
            writer.writerow([i, record.path, record.label])
    print(f"{features.shape[0]} x {features.shape[1]} features -> {args.out}.npy")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
