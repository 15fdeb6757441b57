"""Evaluation: per-view predictions on every rank, a merge that counts each view exactly once,
top-1/top-5, per-class accuracy, a confusion-matrix picture and a predictions file."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import torch

from ..data import EvalVideoError
from .data import build_eval_loader, class_names
from .host import to_numpy
from .tasks import normalize_on_device


class ViewMergeError(RuntimeError):
    pass


@torch.no_grad()
def predict_views(model_fn, loader, device) -> list[tuple]:
    """(video index, clip, crop, softmax probabilities) for every view this rank evaluates; a view
    skipped because its video failed to load (DATA.EVAL_SKIP_BAD) has None for probabilities."""
    rows = []
    for batch in loader:
        rows += [(int(index), int(clip), int(crop), None) for index, clip, crop, _ in batch.get("bad", [])]
        if "video" not in batch:
            continue
        logits = model_fn(normalize_on_device(batch["video"], device)).float()
        probs = to_numpy(torch.softmax(logits, dim=-1))
        clips = batch.get("clip_index", torch.zeros_like(batch["index"]))
        crops = batch.get("crop_index", torch.zeros_like(batch["index"]))
        for i in range(len(probs)):
            rows.append((int(batch["index"][i]), int(clips[i]), int(crops[i]), probs[i]))
    return rows


def gather_rows(rows: list) -> list:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows)
        return [row for part in parts for row in part]
    return rows


def merge_views(rows: list, num_videos: int, views_per_video: int) -> np.ndarray:
    """Average softmax over the views of each video -> (num_videos, classes). Every view must be
    present exactly once: a duplicate or a missing view is an error, never silently averaged.
    A video with a skipped view (probabilities None) gets a row of NaN: it is left out of the
    metrics and listed as skipped, not judged on its other views."""
    seen: dict[int, dict[tuple, np.ndarray]] = {}
    for index, clip, crop, probs in rows:
        views = seen.setdefault(index, {})
        if (clip, crop) in views:
            raise ViewMergeError(f"video {index}: view (clip {clip}, crop {crop}) was evaluated twice")
        views[(clip, crop)] = probs
    missing = [i for i in range(num_videos) if len(seen.get(i, {})) != views_per_video]
    if missing:
        i = missing[0]
        raise ViewMergeError(f"{len(missing)} videos lack views, e.g. video {i} has {len(seen.get(i, {}))} "
                             f"of {views_per_video}")
    num_classes = next((len(p) for views in seen.values() for p in views.values() if p is not None), None)
    if num_classes is None:
        raise EvalVideoError(f"all {num_videos} videos failed to load; is DATA.ROOT right?")
    skipped = np.full(num_classes, np.nan, dtype=np.float32)
    return np.stack([skipped if any(p is None for p in seen[i].values())
                     else np.mean([seen[i][v] for v in sorted(seen[i])], axis=0) for i in range(num_videos)])


def predict_dataset(model_fn, cfg, dataset, world: int, rank: int, device) -> np.ndarray:
    """Softmax per video (views averaged), each rank predicting its share, merged on every rank."""
    loader = build_eval_loader(cfg, dataset, world, rank)
    rows = gather_rows(predict_views(model_fn, loader, device))
    return merge_views(rows, len(dataset.records), dataset.views_per_video)


def test_report(cfg, dataset, probs: np.ndarray, out_dir: str, is_main: bool) -> dict:
    """Metrics of the multi-view test; the main process also writes the reports and
    `test_metrics.json` to `out_dir`. Skipped videos (NaN rows) are counted and listed there."""
    metrics = classification_metrics(probs, np.array([r.label for r in dataset.records]))
    metrics["views"] = f"{cfg.DATA.TEST_NUM_CLIPS}x{cfg.DATA.TEST_NUM_CROPS}"
    kept = ~np.isnan(probs).any(1)
    if cfg.DATA.EVAL_SKIP_BAD:   # asked for: say how many were skipped, also when none was
        metrics["skipped"] = int((~kept).sum())
        metrics["skipped_videos"] = [f"{r.where} {r.path}" for r, k in zip(dataset.records, kept) if not k]
    if is_main:
        records = [r for r, k in zip(dataset.records, kept) if k]
        write_reports(out_dir, "test", probs[kept], records, class_names(cfg))
        with open(os.path.join(out_dir, "test_metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=1)
    return metrics


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """top-1, top-5 and mean per-class accuracy over the videos with predictions; `skipped`
    counts the rows of NaN (videos that failed to load, skipped on request)."""
    kept = ~np.isnan(probs).any(1)
    skipped = int((~kept).sum())
    probs, labels = probs[kept], labels[kept]
    k = min(5, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    top1 = float((top[:, 0] == labels).mean() * 100)
    top5 = float((top == labels[:, None]).any(1).mean() * 100)
    classes = np.unique(labels)
    per_class = float(np.mean([(top[labels == c, 0] == c).mean() for c in classes]) * 100)
    metrics = {"top1": top1, "top5": top5, "mean_class_acc": per_class, "videos": int(len(labels))}
    return {**metrics, "skipped": skipped} if skipped else metrics


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, pred), 1)
    return matrix


def write_reports(out_dir: str, name: str, probs: np.ndarray, records, class_names=None) -> dict:
    """`<name>_predictions.csv`, `<name>_confusion.png` and `<name>_per_class.csv`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    labels = np.array([r.label for r in records])
    pred = probs.argmax(1)
    num_classes = probs.shape[1]
    names = class_names or [str(i) for i in range(num_classes)]
    with open(os.path.join(out_dir, f"{name}_predictions.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "prediction", "probability", "top5"])
        for r, p, row in zip(records, pred, probs):
            writer.writerow([r.path, r.label, int(p), f"{row[p]:.4f}", " ".join(map(str, np.argsort(-row)[:5]))])
    matrix = confusion_matrix(pred, labels, num_classes)
    with open(os.path.join(out_dir, f"{name}_per_class.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "name", "videos", "accuracy"])
        for c in range(num_classes):
            total = matrix[c].sum()
            writer.writerow([c, names[c], int(total), f"{matrix[c, c] / total * 100:.2f}" if total else ""])
    size = min(12, 3 + 0.25 * num_classes)
    fig, ax = plt.subplots(figsize=(size, size), dpi=110)
    normalized = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    if num_classes <= 30:
        ax.set_xticks(range(num_classes), names, rotation=90, fontsize=7)
        ax.set_yticks(range(num_classes), names, fontsize=7)
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6,
                        color="white" if normalized[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{name}: top-1 {(pred == labels).mean() * 100:.1f}%")
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}_confusion.png")
    fig.savefig(path)
    plt.close(fig)
    return {"confusion_png": path}
