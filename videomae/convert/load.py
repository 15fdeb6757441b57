"""Load weights from any supported checkpoint into one of our models, and say what happened.

    report = load_checkpoint(model, "videomae_pretrain_k400.pth")
    print(report)      # loaded / dropped (decoder, old head, ...) / newly initialised / adapted

A checkpoint that does not fit -- another width or depth, or a pretraining file where a
fine-tuned one is required -- is a `CheckpointError` naming the keys, never a silent partial load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.classifier import VideoClassifier
from ..models.pos_embed import SeparablePosEmbed, resize_separable
from .formats import CheckpointError, canonical_state, read_state_dict
from .hf import apply_hf_layer_norm_eps

PRETRAIN_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token", "decoder_")


@dataclass
class LoadReport:
    source: str
    fmt: str
    loaded: list = field(default_factory=list)
    adapted: list = field(default_factory=list)     # (key, what was done)
    dropped: list = field(default_factory=list)     # (key, why)
    new: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.fmt}): loaded {len(self.loaded)} tensors"]
        for key, what in self.adapted:
            lines.append(f"  adapted {key}: {what}")
        reasons: dict[str, list[str]] = {}
        for key, why in self.dropped:
            reasons.setdefault(why, []).append(key)
        for why, keys in reasons.items():
            shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            lines.append(f"  dropped {len(keys)} ({why}): {shown}")
        if self.new:
            lines.append(f"  newly initialised: {', '.join(self.new)}")
        return "\n".join(lines)


def _encoder_view(state: dict, model) -> dict:
    """Keys as the target model names them: bare encoder keys for a classifier,
    `encoder.`-prefixed ones for the pretraining model."""
    if isinstance(model, VideoClassifier):
        return {(k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}
    if not any(k.startswith("encoder.") for k in state):  # a fine-tuned / encoder-only file
        return {(k if k.startswith(PRETRAIN_ONLY) else f"encoder.{k}"): v for k, v in state.items()}
    return state


def _inflate_patch_embed(weight: torch.Tensor, tubelet: int) -> torch.Tensor:
    """Conv3d kernel (D, C, t, p, p) -> (D, C, tubelet, p, p): interpolate over time and rescale so
    a static clip embeds the same (I3D-style inflation)."""
    t_old = weight.shape[2]
    w = weight.permute(0, 1, 3, 4, 2).reshape(-1, 1, t_old)
    w = F.interpolate(w.float(), size=tubelet, mode="linear", align_corners=False)
    w = w.reshape(*weight.shape[:2], *weight.shape[3:], tubelet).permute(0, 1, 4, 2, 3)
    return (w * (t_old / tubelet)).to(weight.dtype)


@dataclass
class Checkpoint:
    """A checkpoint read once, in our key names: tools look at it (its class count) before building
    the model, then load it without reading the file again."""
    name: str
    state: dict
    fmt: str
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """Classes of its trained head, or None when it has none (pretraining / encoder-only)."""
        head = self.state.get("head.weight")
        return int(head.shape[0]) if head is not None and head.ndim == 2 else None


def open_checkpoint(source) -> Checkpoint:
    """`source`: a path (file or folder), a state dict, or an already opened Checkpoint."""
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, (str, os.PathLike)):
        raw, meta = read_state_dict(source)
        name = os.fspath(source)
    else:
        raw, meta, name = source, {}, "state dict"
    state, fmt = canonical_state(raw)
    return Checkpoint(name, state, fmt, meta)


def load_checkpoint(model, source, require_classifier: bool = False, new_head: bool = False) -> LoadReport:
    """Load `source` (a path, a state dict or a Checkpoint) into `model` (PretrainVideoMAE or
    VideoClassifier).

    A trained head of another class count is dropped (and reported) when fine-tuning starts from it;
    with `require_classifier` (evaluating the head as it is) that is an error instead. `new_head`
    drops the checkpoint's head even when it fits, for a fresh one asked for explicitly."""
    ckpt = open_checkpoint(source)
    name, fmt, meta = ckpt.name, ckpt.fmt, ckpt.meta
    state = _encoder_view(ckpt.state, model)
    report = LoadReport(name, fmt)
    is_classifier = isinstance(model, VideoClassifier)
    encoder = model if is_classifier else model.encoder
    prefix = "" if is_classifier else "encoder."

    # a trained classifier: a head, and the norm before it (fc_norm, or the final norm of a
    # use_mean_pooling=False model)
    if require_classifier and ("head.weight" not in state or not {"fc_norm.weight", "norm.weight"} & set(state)):
        has_decoder = any(k.startswith(PRETRAIN_ONLY) for k in state)
        raise CheckpointError(
            f"{name} is a {'pretraining' if has_decoder else 'encoder-only'} checkpoint (no head.weight / "
            "fc_norm.weight): evaluating it would score an untrained head. Fine-tune it first (TASK finetune, "
            "MODEL.PRETRAINED) and test the fine-tuned model.pt.")

    target = model.state_dict()
    merged = {}
    for key, value in state.items():
        if key.endswith("k_bias_dropped"):
            report.dropped.append((key.replace("_dropped", ""), "key bias: softmax-invariant, dropped exactly"))
            continue
        if key == f"{prefix}pos_embed" or key == "pos_embed" or key == "decoder_pos_embed":
            report.dropped.append((key, "fixed sinusoid, rebuilt for this model's grid"))
            continue
        if key.startswith(f"{prefix}pos_embed.pos_embed_") and isinstance(encoder.pos_embed, SeparablePosEmbed):
            continue  # handled below, with resizing
        if new_head and key.startswith("head."):
            report.dropped.append((key, "trained head replaced by a fresh one, as asked"))
            continue
        if key not in target:
            why = ("pretraining-only (decoder)" if key.startswith(PRETRAIN_ONLY) else
                   "final norm, unused with mean pooling" if key.startswith("norm.") else
                   "classification head, not part of a pretraining model" if key.startswith(("head.", "fc_norm."))
                   else "no such parameter in the target model")
            report.dropped.append((key, why))
            continue
        want = target[key].shape
        if value.shape != want:
            if key == f"{prefix}patch_embed.proj.weight" and value.shape[:2] == want[:2] and \
                    value.shape[3:] == want[3:]:
                merged[key] = _inflate_patch_embed(value, want[2])
                report.adapted.append((key, f"tubelet {value.shape[2]} -> {want[2]} (inflated)"))
                continue
            if key.startswith("head.") and require_classifier:
                raise CheckpointError(f"{name} has a trained {ckpt.num_classes}-class head but the model was built "
                                      f"for {getattr(model, 'num_classes', '?')} classes: build it with "
                                      f"{ckpt.num_classes} to evaluate that head")
            if key.startswith("head."):
                report.dropped.append((key, f"old head {tuple(value.shape)} != {tuple(want)}"))
                continue
            if key.startswith("decoder.head."):
                report.dropped.append((key, f"decoder head for another cube size {tuple(value.shape)}"))
                continue
            raise CheckpointError(f"{name}: {key} has shape {tuple(value.shape)} but the model needs "
                                  f"{tuple(want)}; the checkpoint is for another model size (width/depth/patch)")
        merged[key] = value

    if isinstance(encoder.pos_embed, SeparablePosEmbed):
        sp, tp = f"{prefix}pos_embed.pos_embed_spatial", f"{prefix}pos_embed.pos_embed_temporal"
        if sp in state and tp in state:
            spatial, temporal = state[sp], state[tp]
            side = int(round(spatial.shape[1] ** 0.5))
            old_grid = (temporal.shape[1], side, side)
            if old_grid != tuple(encoder.grid_size):
                spatial, temporal = resize_separable(spatial, temporal, old_grid, encoder.grid_size)
                report.adapted.append((f"{prefix}pos_embed", f"grid {old_grid} -> {tuple(encoder.grid_size)}"))
            merged[sp], merged[tp] = spatial, temporal

    missing = [k for k in target if k not in merged]
    structural = [k for k in missing if not k.startswith(("head.", "fc_norm.", "decoder", "encoder_to_decoder",
                                                          "mask_token"))]
    if structural and not is_classifier and f"{prefix}fc_norm.weight" in state:
        raise CheckpointError(f"{name} is a fine-tuned classifier checkpoint (fc_norm + head, no final norm, no "
                              "decoder): a pretraining model cannot start from it; use the pretraining "
                              "checkpoint it was fine-tuned from")
    if structural:
        raise CheckpointError(f"{name} does not fit the model: missing {len(structural)} tensors, e.g. "
                              f"{structural[:5]} (another depth, or not a VideoMAE-family checkpoint)")
    model.load_state_dict(merged, strict=False)
    if fmt == "hf":  # a HF folder's config.json says which LayerNorm eps its weights were trained with
        report.adapted.extend(apply_hf_layer_norm_eps(model, meta.get("hf_config")))
    report.loaded = sorted(merged)
    report.new = missing
    return report
