"""Features of a frozen encoder for every video of a list: one per video (views averaged), or one
per snippet of a sliding window (temporal action detection).

    python tools/extract_features.py --checkpoint runs/pretrain/model.pt --list /data/k400/lists/val.csv \
        --out features/k400_val
    torchrun --nproc_per_node 8 tools/extract_features.py --checkpoint vit_b.pth \
        --config configs/finetune/k400_vit_b.yaml --list thumos.csv --out features/thumos --snippet 16 --stride 4

The feature: the tokens after block --layer (default: the last block), mean-pooled over all tokens,
then fc_norm, a LayerNorm (eps 1e-6). A fine-tuned checkpoint brings its trained fc_norm; a
pretraining checkpoint has none, so fc_norm is the identity-affine LayerNorm (weight 1, bias 0), and
the encoder's final norm from pretraining is not applied (as in fine-tuning, which starts from it).
A model without mean pooling (its head reads token 0) gives token 0 after the encoder's final norm
(--layer below the last: token 0 of that block, no norm).

Output: `<out>.npy` (rows x dim, float32) and `<out>.csv`. Per video: row, path, label; the views
(--views) of a video are averaged. With --snippet N --stride S: one row per snippet of N consecutive
frames starting at frames 0, S, 2S, ... (while the snippet fits; a video shorter than N gives one
snippet, its last frame repeated), centre crop at MODEL.IMG_SIZE, rows ordered by video then start;
the csv gives row, path, label, snippet, start_frame. N must be the model's MODEL.NUM_FRAMES.

Under torchrun (or srun) each rank takes a contiguous share of the list and rank 0 merges the shares
into the same files a single process writes. Works with pretraining or fine-tuned checkpoints: only
the encoder is used. Our model.pt files carry their config; it is read as data: its IMPORTS are not
imported (name a plugin the model needs on the command line: IMPORTS my_plugin.py).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from videomae.cli import run_tool  # noqa: E402


PRETRAIN_PREFIX, CLASSIFIER_PREFIX = "pretrain_videomae_", "videomae_vit_"   # the registered name pairs


def features(model, video, layer: int):
    """(B, D) features of normalized clips: the tokens after `layer` blocks, pooled as the model
    pools them (see the module docstring). `layer == depth` is exactly `model.forward_features`."""
    x = model.embed(video)
    for block in list(model.blocks)[:layer]:
        x = block(x)
    if layer == len(model.blocks):
        x = model.norm(x)   # the identity for mean-pooling models
    return model.fc_norm(x.mean(dim=1)) if model.fc_norm is not None else x[:, 0]


def shard(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of n items (the shares of all ranks cover 0..n-1 once)."""
    return range(-(-n * rank // world), -(-n * (rank + 1) // world))


def snippet_starts(num_frames: int, length: int, stride: int) -> list[int]:
    return list(range(0, num_frames - length + 1, stride)) if num_frames >= length else [0]


def video_features(model, dataset, shares, args, cfg, device):
    """This rank's per-video rows: (record index, summed features, views) over its share of views."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from videomae.engine.data import make_loader
    from videomae.engine.host import to_numpy
    from videomae.engine.tasks import normalize_on_device

    subset = torch.utils.data.Subset(dataset, list(shares))
    loader = make_loader(subset, cfg.TRAIN.BATCH_SIZE, cfg.DATA.NUM_WORKERS, shuffle=False, drop_last=False,
                         timeout=cfg.DATA.LOADER_TIMEOUT)
    sums, counts = {}, {}
    with torch.no_grad():
        for batch in tqdm(loader, desc="features", unit="batch", disable=not args.progress):
            feats = to_numpy(features(model, normalize_on_device(batch["video"], device), args.layer))
            for index, feat in zip(batch["index"].tolist(), feats):
                sums[index] = sums.get(index, 0.0) + feat.astype(np.float64)
                counts[index] = counts.get(index, 0) + 1
    keys = sorted(sums)
    return {"index": np.array(keys, dtype=np.int64),
            "sums": np.stack([sums[k] for k in keys]) if keys else np.zeros((0, model.embed_dim)),
            "counts": np.array([counts[k] for k in keys], dtype=np.int64)}


def snippet_features(model, dataset, shares, args, cfg, device):
    """This rank's snippet rows: (record index, start frame, feature) for the videos of its share."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from videomae.data.datasets import EvalVideoError, channels_first
    from videomae.data.decoding import VideoDecodeError
    from videomae.data.transforms import eval_transform
    from videomae.engine.host import to_numpy
    from videomae.engine.tasks import normalize_on_device

    transform, length = eval_transform(cfg.MODEL.IMG_SIZE), args.snippet
    rows, starts, feats = [], [], []
    with torch.no_grad():
        for index in tqdm(shares, desc="snippets", unit="video", disable=not args.progress):
            record = dataset.records[index]
            try:
                with dataset.open(record) as reader:
                    begin = snippet_starts(len(reader), length, args.stride)
                    for at in range(0, len(begin), cfg.TRAIN.BATCH_SIZE):   # a batch of snippets at a time
                        chunk = begin[at:at + cfg.TRAIN.BATCH_SIZE]
                        wanted = sorted({min(s + i, len(reader) - 1) for s in chunk for i in range(length)})
                        frames = torch.from_numpy(reader.get_frames(wanted)).permute(0, 3, 1, 2)
                        where = {f: k for k, f in enumerate(wanted)}
                        clips = channels_first([transform(frames[[where[min(s + i, len(reader) - 1)]
                                                                  for i in range(length)]], None) for s in chunk])
                        out = to_numpy(features(model, normalize_on_device(clips, device), args.layer))
                        rows += [index] * len(chunk)
                        starts += chunk
                        feats.append(out)
            except VideoDecodeError as err:
                raise EvalVideoError(f"video {record.where or record.path} failed to load: {' '.join(str(err).split())}; "
                                     "drop it from the list (tools/check_videos.py --full finds every such file)") from None
    return {"index": np.array(rows, dtype=np.int64), "start": np.array(starts, dtype=np.int64),
            "features": np.concatenate(feats) if feats else np.zeros((0, model.embed_dim), dtype=np.float32)}


def merge(parts: list[dict], num_records: int, snippets: bool):
    """Rank 0: the shares of every rank -> (features, rows of (record index, start or None))."""
    import numpy as np

    if snippets:
        index = np.concatenate([p["index"] for p in parts])
        start = np.concatenate([p["start"] for p in parts])
        feats = np.concatenate([p["features"] for p in parts])
        order = np.lexsort((start, index))
        return feats[order].astype(np.float32), list(zip(index[order].tolist(), start[order].tolist()))
    dim = parts[0]["sums"].shape[1]
    sums, counts = np.zeros((num_records, dim)), np.zeros(num_records)
    for p in parts:   # a video's views may lie in two ranks' shares: summed, then averaged
        np.add.at(sums, p["index"], p["sums"])
        np.add.at(counts, p["index"], p["counts"])
    return (sums / counts[:, None]).astype(np.float32), [(i, None) for i in range(num_records)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="default: the config our model.pt carries")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--list", required=True, help="VideoMAE list (<path> <label>)")
    parser.add_argument("--out", required=True, help="output prefix: writes <out>.npy and <out>.csv")
    parser.add_argument("--views", choices=["center", "test"], default="center",
                        help="one centre view, or the config's clips x crops (averaged)")
    parser.add_argument("--snippet", type=int, default=0, metavar="N",
                        help="one feature per snippet of N consecutive frames (N = MODEL.NUM_FRAMES)")
    parser.add_argument("--stride", type=int, default=0, metavar="S",
                        help="frames between snippet starts (default: N, no overlap)")
    parser.add_argument("--layer", type=int, default=0, metavar="K",
                        help="features after block K, 1 = the first (default: the last block)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from videomae.convert import CheckpointError, load_checkpoint
    from videomae.engine.classification import build_classifier_from_cfg
    from videomae.engine.config import ConfigError, checkpoint_config
    from videomae.engine.data import build_dataset
    from videomae.engine.distributed import init_distributed

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
    if args.snippet and args.snippet != cfg.MODEL.NUM_FRAMES:
        raise ConfigError(f"--snippet {args.snippet} must be the model's clip length MODEL.NUM_FRAMES "
                          f"({cfg.MODEL.NUM_FRAMES})")
    if args.snippet < 0 or args.stride < 0 or (args.stride and not args.snippet):
        raise ConfigError("--stride S goes with --snippet N, both > 0")
    if args.snippet and args.views == "test":
        raise ConfigError("--views test does not apply to --snippet: a snippet is one centre-cropped clip")
    args.stride = args.stride or args.snippet
    info, device = init_distributed()
    args.progress = info.rank == 0 and cfg.LOG.PROGRESS
    model = build_classifier_from_cfg(cfg, log=print if info.rank == 0 else (lambda *_: None))
    depth = len(model.blocks)
    args.layer = args.layer or depth
    if not 1 <= args.layer <= depth:
        raise ConfigError(f"--layer {args.layer} is not a block of this {depth}-block encoder (1..{depth})")
    try:
        report = load_checkpoint(model, args.checkpoint)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if info.rank == 0:
        print(report)
    model.to(device).eval()
    snippets = bool(args.snippet)
    dataset = build_dataset(cfg, "test" if args.views == "test" and not snippets else "val")
    dataset.skip_bad = False   # every output row needs its video: a bad one stops with its list file:line
    if snippets:
        part = snippet_features(model, dataset, shard(len(dataset.records), info.rank, info.world_size), args, cfg,
                                device)
    else:
        part = video_features(model, dataset, shard(len(dataset), info.rank, info.world_size), args, cfg, device)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    parts = [part]
    if info.world_size > 1:   # every rank's share to rank 0 (the shares are small next to the videos read)
        gathered = [None] * info.world_size if info.rank == 0 else None
        torch.distributed.gather_object(part, gathered, dst=0)
        parts = gathered
    if info.rank != 0:
        return 0
    feats, rows = merge(parts, len(dataset.records), snippets)
    np.save(f"{args.out}.npy", feats)
    with open(f"{args.out}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "label", "snippet", "start_frame"] if snippets else ["row", "path", "label"])
        count = {}
        for i, (index, start) in enumerate(rows):
            record = dataset.records[index]
            if snippets:
                writer.writerow([i, record.path, record.label, count.get(index, 0), start])
                count[index] = count.get(index, 0) + 1
            else:
                writer.writerow([i, record.path, record.label])
    what = f"snippets of {args.snippet} frames every {args.stride}" if snippets else "videos"
    print(f"{feats.shape[0]} x {feats.shape[1]} features ({what}, block {args.layer} of {depth}) -> {args.out}.npy")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
