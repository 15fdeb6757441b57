"""Held-out numbers of one pretrained cell: masked-cube loss under a common mask and under the
cell's own, k-NN top-1 and a linear probe on frozen features.

Train losses of different masking strategies measure different tasks; these measure the same
thing for every strategy:

- `recon`: the masked-cube loss on the validation list. The common mask is random masking at the
  run's MASK.RATIO, drawn per validation item from (COMMON_MASK_SEED, item) through the seeding
  protocol, so every strategy and every seed is scored on the same masks
  (videomae/engine/reconstruction.py: pretraining's validation pass logs the same number). The own mask is the
  cell's strategy drawn from the same per-item keys (for `random` the two coincide). With dual
  masking the decoder reconstructs every masked cube here (no decoder mask).
- `knn`: top-1 of a weighted k-NN on frozen features (Wu et al. 2018, as DINO evaluates): cosine
  similarity, the k = 20 nearest training clips (fewer when the memory is smaller), each votes for
  its label with weight exp(similarity / 0.07); the training list is the memory, the validation
  list the queries.
- `probe`: multinomial logistic regression on the same frozen features (standardized with the
  training features' mean and std, L2 on the weights), solved to convergence with full-batch
  L-BFGS from zero: a deterministic function of the features.

Features: the encoder in eval mode (no drop path) without gradients sees every token of one view
per video -- the centre clip (dense sampling at DATA.SAMPLING_RATE, as in pretraining) and the
centre crop, no augmentation -- and its output tokens are mean-pooled.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..engine.reconstruction import COMMON_MASK_SEED, common_strategy, eval_config, item_masks, loss_sums  # noqa: F401
from ..masking import build_masking
from ..masking.motion import masking_kwargs

KNN_K, KNN_TEMPERATURE = 20, 0.07
PROBE_WEIGHT_DECAY, PROBE_MAX_ITER = 1e-3, 500
# what each --eval choice reports, in report order
METRICS = {"recon": ("recon_common", "recon_own"), "knn": ("knn_top1",), "probe": ("probe_top1",),
           "finetune": ("finetune_top1",)}
# computed here from the weights alone; `finetune` is a training run of its own (runner.finetune_cell)
FEATURE_EVALS = ("recon", "knn", "probe")


def eval_loader(cfg, list_name: str):
    from ..engine.data import build_dataset, build_eval_loader

    cfg = eval_config(cfg, list_name)
    dataset = build_dataset(cfg, "val")
    return dataset, build_eval_loader(cfg, dataset, 1, 0)


def reconstruction(model, loader, mask_type: str, ratio: float, device, mask_kwargs: dict | None = None) -> dict:
    """Mean per-clip masked-cube loss under the common mask and under the own mask (the common one
    is what pretraining's validation pass logs, videomae/engine/reconstruction.py). Motion masking's
    own mask scores each validation clip by its frame differences."""
    own = build_masking(mask_type, ratio, **(mask_kwargs or {}))
    sums, clips = loss_sums(model, loader, {"recon_common": common_strategy(ratio), "recon_own": own}, device)
    return {key: value / clips for key, value in sums.items()}


def masked_share(mask_type: str, ratio: float, grid, rows: int, mask_kwargs: dict | None = None) -> float:
    """The share of cubes the strategy hides, counted on its masks of validation items 0..rows-1
    (the own masks `reconstruction` scores): a strategy of your own is described by what it does.
    (Motion masking's count does not depend on the scores, so no video is needed for it.)"""
    mask = item_masks(build_masking(mask_type, ratio, **(mask_kwargs or {})), torch.arange(rows), grid, "cpu")
    return float(mask.sum()) / mask.numel()


@torch.no_grad()
def encoder_features(encoder, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """(videos x dim float32 features, labels) in the dataset's order: mean-pooled output tokens of
    the frozen encoder (eval mode, no gradient) over every token of the view."""
    from ..engine.tasks import normalize_on_device

    was_training = encoder.training
    encoder.eval()
    feats, labels, order = [], [], []
    try:
        for batch in loader:
            tokens = encoder(normalize_on_device(batch["video"], device))   # [B, N, D]
            feats.append(tokens.float().mean(dim=1).cpu())
            labels.append(batch["label"].cpu())
            order.append(batch["index"].cpu())
    finally:
        encoder.train(was_training)
    index = torch.cat(order)
    if not torch.equal(index.sort().values, torch.arange(len(index))):
        raise RuntimeError("feature extraction did not see every video exactly once")
    rank = index.argsort()
    return torch.cat(feats)[rank].numpy(), torch.cat(labels)[rank].numpy()


def knn_top1(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
             k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> float:
    """Weighted k-NN top-1 (%) with cosine similarity; k is capped at the memory's size."""
    mem = torch.nn.functional.normalize(torch.as_tensor(memory, dtype=torch.float64), dim=1)
    qry = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float64), dim=1)
    labels = torch.as_tensor(memory_labels, dtype=torch.int64)
    classes = int(max(labels.max(), int(np.max(query_labels)))) + 1
    sim, idx = (qry @ mem.T).topk(min(k, len(mem)), dim=1)          # [Q, k]
    votes = torch.zeros(len(qry), classes, dtype=torch.float64)
    votes.scatter_add_(1, labels[idx], torch.exp(sim / temperature))
    pred = votes.argmax(dim=1).numpy()
    return float((pred == np.asarray(query_labels)).mean() * 100)


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, weight_decay: float = PROBE_WEIGHT_DECAY,
              max_iter: int = PROBE_MAX_ITER) -> dict:
    """Minimize mean cross-entropy(z W + b, y) + weight_decay / 2 * |W|^2 over W, b, where
    z = (x - mean) / std with the training features' statistics. Full-batch L-BFGS in float64
    from zero: deterministic. Returns the parameters and the standardization."""
    x = torch.as_tensor(x, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z, target = (x - mean) / std, torch.as_tensor(y, dtype=torch.int64)
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, target) + weight_decay / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return {"weight": weight.detach(), "bias": bias.detach(), "mean": mean, "std": std}


def probe_top1(train_x, train_y, val_x, val_y, weight_decay: float = PROBE_WEIGHT_DECAY) -> float:
    classes = int(max(np.max(train_y), np.max(val_y))) + 1
    p = fit_probe(train_x, train_y, classes, weight_decay)
    z = (torch.as_tensor(val_x, dtype=torch.float64) - p["mean"]) / p["std"]
    pred = (z @ p["weight"] + p["bias"]).argmax(1).numpy()
    return float((pred == np.asarray(val_y)).mean() * 100)


# -- one cell ---------------------------------------------------------------------------------------
EVAL_VERSION = 1   # bump when a metric's definition changes: cached results are then recomputed


def model_stamp(path: str) -> list:
    """What identifies the weights a cached result was computed from."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def load_pretrained(cfg, weights: str, device):
    """The cell's pretraining model with its final weights, on `device`."""
    from ..convert import load_checkpoint
    from ..engine.tasks import PretrainTask

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.PRETRAINED = ""
    cfg.freeze()
    task = PretrainTask(cfg)
    task.log = lambda *_: None
    model = task.build_model()
    load_checkpoint(model, weights)
    return model.to(device)


def cell_features(cfg, model, cache: str, stamp: list, device) -> dict:
    """Train and val features of the frozen encoder, extracted once per weights (`cache`, .npz)."""
    if os.path.exists(cache):
        with np.load(cache) as stored:
            if stored["stamp"].tolist() == stamp:
                return {k: stored[k] for k in ("train_x", "train_y", "val_x", "val_y")}
    out = {}
    for split, list_name in (("train", cfg.DATA.TRAIN_LIST), ("val", cfg.DATA.VAL_LIST)):
        _, loader = eval_loader(cfg, list_name)
        out[f"{split}_x"], out[f"{split}_y"] = encoder_features(model.encoder, loader, device)
    tmp = cache + ".tmp.npz"
    np.savez(tmp, stamp=np.array(stamp), **out)
    os.replace(tmp, cache)
    return out


def evaluate_cell(cfg, cell_dir: str, evals: list[str], device, cache_name: str = "compare_eval.json") -> dict:
    """The cell's metrics for `evals` (recon, knn, probe) and its effective masked share, computed
    once per weights and kept in `cell_dir/compare_eval.json`."""
    weights = os.path.join(cell_dir, "model.pt")
    stamp = model_stamp(weights)
    path = os.path.join(cell_dir, cache_name)
    cached = {}
    if os.path.exists(path):
        with open(path) as handle:
            cached = json.load(handle)
        if cached.get("stamp") != stamp or cached.get("version") != EVAL_VERSION:
            cached = {}
    metrics = cached.get("metrics", {})
    wanted = METRICS
    evals = [e for e in evals if e in FEATURE_EVALS]
    todo = [e for e in evals if any(m not in metrics for m in wanted[e])]
    if todo or "effective_masked_share" not in cached:
        model = load_pretrained(cfg, weights, device)
        val_set, val_loader = eval_loader(cfg, cfg.DATA.VAL_LIST)
        cached["effective_masked_share"] = masked_share(cfg.MASK.TYPE, cfg.MASK.RATIO, tuple(model.grid_size),
                                                        len(val_set), masking_kwargs(cfg))
        if "recon" in todo:
            metrics.update(reconstruction(model, val_loader, cfg.MASK.TYPE, cfg.MASK.RATIO, device,
                                          masking_kwargs(cfg)))
        if "knn" in todo or "probe" in todo:
            feats = cell_features(cfg, model, os.path.join(cell_dir, "compare_features.npz"), stamp, device)
            if "knn" in todo:
                metrics["knn_top1"] = knn_top1(feats["train_x"], feats["train_y"], feats["val_x"], feats["val_y"])
            if "probe" in todo:
                metrics["probe_top1"] = probe_top1(feats["train_x"], feats["train_y"], feats["val_x"],
                                                   feats["val_y"])
        cached.update(stamp=stamp, version=EVAL_VERSION, metrics=metrics)
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(cached, handle, indent=1)
        os.replace(tmp, path)
    return {"effective_masked_share": cached["effective_masked_share"],
            "metrics": {m: metrics[m] for e in evals for m in wanted[e]}}
