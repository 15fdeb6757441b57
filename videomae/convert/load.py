"""Load weights from any supported checkpoint into one of our models, and say what happened.

    report = load_checkpoint(model, "videomae_pretrain_k400.pth")
    print(report)      # loaded / dropped (decoder, old head, ...) / newly initialised / adapted

A checkpoint that does not fit -- another width or depth, or a pretraining file where a
fine-tuned one is required -- is a `CheckpointError` naming the keys, never a silent partial load.
Where the checkpoint says how the model was built, the model follows it or the load refuses:
learned separable position tables replace a fixed sinusoid; a cls token needs a model with one
(or `drop_cls_token=True`, which changes the encoder's outputs and says so).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..models.classifier import POOLS, VideoClassifier
from ..models.pos_embed import SeparablePosEmbed, SinusoidPosEmbed, resize_separable, sinusoid_table
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
    """A checkpoint read once, in our key names: tools look at it (its class count, cls token,
    pooling) before building the model, then load it without reading the file again."""
    name: str
    state: dict
    fmt: str
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """Classes of its trained head, or None when it has none (pretraining / encoder-only)."""
        head = self.state.get("head.weight")
        return int(head.shape[0]) if head is not None and head.ndim == 2 else None

    @property
    def has_cls_token(self) -> bool:
        return "cls_token" in self.state or "encoder.cls_token" in self.state

    @property
    def pool(self) -> str | None:
        """How its trained head pools tokens, where the file says so (see VideoClassifier): stored
        by our converter, MAE-ST's head (tokens 1:, which leaves out the cls token or, without one,
        the first cube's token), or token 0 (a final norm and no fc_norm). None: no head, or a
        mean-pooling head whose variant the file does not tell (the config decides)."""
        if self.num_classes is None:
            return None
        if self.meta.get("pool") in POOLS:
            return self.meta["pool"]
        if self.fmt == "maest":
            return "mean" if self.has_cls_token else "skip_first"
        if "fc_norm.weight" not in self.state and "norm.weight" in self.state:
            return "token0"
        return None


POOL_WORDS = {"mean": "the mean of its cube tokens", "token0": "token 0 after the final norm",
              "skip_first": "the mean of tokens 1: (MAE-ST without cls token)"}


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


def _is_sinusoid(table: torch.Tensor) -> bool:
    """A stored joint table that is the fixed sinusoid (rebuilt, so droppable), not a learned one."""
    return table.ndim == 3 and table.shape[0] == 1 and torch.allclose(
        table.float().cpu(), sinusoid_table(table.shape[1], table.shape[2]), atol=1e-3)


def _cls_token(state: dict, encoder, prefix: str, drop: bool, report: LoadReport, name: str) -> None:
    """MAE-ST's cls token: into a model with one, its `pos_embed_class` (a constant MAE-ST adds to
    the cls token) is folded in; into a model without one, only when asked, and the report says
    what that does."""
    cls_key, pos_key = f"{prefix}cls_token", f"{prefix}pos_embed_class"
    if cls_key not in state:
        return
    if encoder.cls_token is None:
        if not drop:
            raise CheckpointError(
                f"{name} has a cls token (MAE-ST's cls_embed) but the model has none: build the model with one "
                "(MODEL.CLS_TOKEN True, cls_token=True) to load it exactly, or drop it on purpose (--drop-cls-token, "
                "load_checkpoint(..., drop_cls_token=True)), which changes the encoder's outputs")
        why = ("cls token dropped as asked: every block attended to it, so the encoder's outputs now differ "
               "from the checkpoint's model")
        for key in (cls_key, pos_key):
            if key in state:
                report.dropped.append((key, why))
                del state[key]
        return
    if pos_key in state:
        state[cls_key] = state[cls_key] + state.pop(pos_key)
        report.adapted.append((cls_key, "+ pos_embed_class (MAE-ST adds both to the cls token; folded into one)"))


def _position_slots(model, encoder, prefix: str, state: dict, report: LoadReport) -> list:
    """The model's learned separable tables as (key prefix, owner, attribute), after the model
    followed the checkpoint: its learned separable tables replace a fixed sinusoid (encoder and,
    in a pretraining model, decoder), so they are loaded instead of silently dropped."""
    slots = [(f"{prefix}pos_embed.", encoder, "pos_embed")]
    if not isinstance(model, VideoClassifier):
        slots.append(("decoder_pos_embed.", model, "decoder_pos_embed"))
    if f"{prefix}pos_embed.pos_embed_spatial" in state and isinstance(encoder.pos_embed, SinusoidPosEmbed):
        weight = encoder.patch_embed.proj.weight
        for _, owner, attr in slots:
            old = getattr(owner, attr)
            if isinstance(old, SinusoidPosEmbed):
                setattr(owner, attr, SeparablePosEmbed(old.grid_size, old.dim).to(weight.device, weight.dtype))
        encoder.cfg.pos_embed = "separable"
        report.adapted.append((f"{prefix}pos_embed", "the model's fixed sinusoid replaced by the checkpoint's "
                                                     "learned separable tables (pos_embed_spatial/temporal)"))
    return [slot for slot in slots if isinstance(getattr(slot[1], slot[2]), SeparablePosEmbed)]


def _separable_tables(state: dict, slots: list, name: str, report: LoadReport) -> dict:
    """The checkpoint's separable tables for each slot, resized to the model's grid (bicubic over
    space, linear over time) when the clip length or resolution differs."""
    out = {}
    for key_prefix, owner, attr in slots:
        sp, tp = key_prefix + "pos_embed_spatial", key_prefix + "pos_embed_temporal"
        if sp not in state or tp not in state:
            continue   # missing: reported as new, or refused as structural
        module, spatial, temporal = getattr(owner, attr), state[sp], state[tp]
        side = math.isqrt(spatial.shape[1])
        if spatial.ndim != 3 or temporal.ndim != 3 or side * side != spatial.shape[1]:
            raise CheckpointError(f"{name}: {sp} {tuple(spatial.shape)} / {tp} {tuple(temporal.shape)} are not "
                                  "(1, H'*W', D) and (1, T', D) tables of a square grid")
        if spatial.shape[-1] != module.dim or temporal.shape[-1] != module.dim:
            raise CheckpointError(f"{name}: {sp} is {spatial.shape[-1]} wide but the model's is {module.dim}; the "
                                  "checkpoint is for another model size (width)")
        old_grid = (temporal.shape[1], side, side)
        if old_grid != tuple(module.grid_size):
            spatial, temporal = resize_separable(spatial, temporal, old_grid, module.grid_size)
            report.adapted.append((key_prefix.rstrip("."), f"grid {old_grid} -> {tuple(module.grid_size)}"))
        out[sp], out[tp] = spatial, temporal
    return out


def _decoder_shape(state: dict) -> tuple[int, int, int] | None:
    """(width, depth, MLP width) of a pretraining checkpoint's decoder, read from its tensors (our /
    official VideoMAE v1 and V2 names), or None without one. The head count is not in the shapes."""
    blocks = [int(m.group(1)) for k in state if (m := re.fullmatch(r"decoder\.blocks\.(\d+)\.mlp\.fc1\.weight", k))]
    token = state.get("mask_token")
    if token is None or not blocks:
        return None
    return int(token.shape[-1]), max(blocks) + 1, int(state["decoder.blocks.0.mlp.fc1.weight"].shape[0])


def _fit_decoder(model, state: dict, report: LoadReport, name: str) -> None:
    """Build the pretraining model's decoder as the checkpoint's (V2's giant decoder has a 2,234-wide
    MLP, V2's huge one is 512 wide, v1's 640), freshly, before its weights are loaded: its
    dimensions come from the tensors, not from the preset or MODEL.DECODER_*, and the report says so."""
    shape = _decoder_shape(state)
    cfg = model.cfg
    have = (cfg.decoder_embed_dim, cfg.decoder_depth, int(cfg.decoder_embed_dim * cfg.decoder_mlp_ratio))
    if shape is None or shape == have:
        return
    dim, depth, hidden = shape
    ratio = hidden / dim
    if int(dim * ratio) != hidden:   # a ratio whose product rounds below the width: aim at its middle
        ratio = (hidden + 0.5) / dim
    heads = cfg.decoder_num_heads
    if dim % heads:
        raise CheckpointError(f"{name}: its decoder is {dim} wide, not a multiple of the model's {heads} decoder "
                              "heads (the shapes do not tell the head count): set MODEL.DECODER_HEADS")
    model.rebuild_decoder(dim, depth, ratio)
    report.adapted.append(("decoder", f"built to fit the checkpoint's shapes: width {have[0]} -> {dim}, depth "
                                      f"{have[1]} -> {depth}, MLP {have[2]} -> {hidden} wide ({heads} heads, the "
                                      "model's: the shapes do not tell)"))


def load_checkpoint(model, source, require_classifier: bool = False, new_head: bool = False,
                    drop_cls_token: bool = False) -> LoadReport:
    """Load `source` (a path, a state dict or a Checkpoint) into `model` (PretrainVideoMAE or
    VideoClassifier).

    A trained head of another class count is dropped (and reported) when fine-tuning starts from it;
    with `require_classifier` (evaluating the head as it is) that is an error instead, as is a model
    that pools otherwise than the head was trained. `new_head` drops the checkpoint's head even when
    it fits, for a fresh one asked for explicitly. `drop_cls_token` loads a cls-token checkpoint into
    a model without one (the encoder's outputs change; the report says so)."""
    ckpt = open_checkpoint(source)
    name, fmt, meta = ckpt.name, ckpt.fmt, ckpt.meta
    state = dict(_encoder_view(ckpt.state, model))
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
    if require_classifier and is_classifier and ckpt.pool not in (None, model.pool):
        raise CheckpointError(f"{name}'s head was trained on {POOL_WORDS[ckpt.pool]} but the model pools "
                              f"{POOL_WORDS[model.pool]}: build it with MODEL.POOL {ckpt.pool} (pool={ckpt.pool!r})")

    _cls_token(state, encoder, prefix, drop_cls_token, report, name)
    if not is_classifier:
        _fit_decoder(model, state, report, name)
    slots = _position_slots(model, encoder, prefix, state, report)
    separable = tuple(key_prefix + "pos_embed_" for key_prefix, _, _ in slots)
    target = model.state_dict()
    merged = {}
    for key, value in state.items():
        if key.endswith("k_bias_dropped"):
            report.dropped.append((key.replace("_dropped", ""), "key bias: softmax-invariant, dropped exactly"))
            continue
        if key == f"{prefix}pos_embed" or key == "pos_embed" or key == "decoder_pos_embed":
            if not _is_sinusoid(value):
                raise CheckpointError(f"{name}: {key} {tuple(value.shape)} is a learned joint position table, not "
                                      "the fixed sinusoid; only the sinusoid and learned separable tables "
                                      "(pos_embed_spatial / pos_embed_temporal) are supported")
            report.dropped.append((key, "fixed sinusoid, rebuilt for this model's grid"))
            continue
        if separable and key.startswith(separable):
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
    merged.update(_separable_tables(state, slots, name, report))

    missing = [k for k in target if k not in merged]
    structural = [k for k in missing if not k.startswith(("head.", "fc_norm.", "decoder", "encoder_to_decoder",
                                                          "mask_token", f"{prefix}cls_token"))]
    if structural and not is_classifier and f"{prefix}fc_norm.weight" in state:
        raise CheckpointError(f"{name} is a fine-tuned classifier checkpoint (fc_norm + head, no final norm, no "
                              "decoder): a pretraining model cannot start from it; use the pretraining "
                              "checkpoint it was fine-tuned from")
    if f"{prefix}pos_embed.pos_embed_spatial" in structural and len(structural) == 2:
        raise CheckpointError(f"{name} has no learned separable position tables (pos_embed_spatial/temporal): it "
                              "was trained with the fixed sinusoid; build the model with MODEL.POS_EMBED sinusoid")
    if structural:
        raise CheckpointError(f"{name} does not fit the model: missing {len(structural)} tensors, e.g. "
                              f"{structural[:5]} (another depth, or not a VideoMAE-family checkpoint)")
    model.load_state_dict(merged, strict=False)
    if fmt == "hf":  # a HF folder's config.json says which LayerNorm eps its weights were trained with
        report.adapted.extend(apply_hf_layer_norm_eps(model, meta.get("hf_config")))
    report.loaded = sorted(merged)
    report.new = missing
    return report
