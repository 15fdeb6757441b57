"""Reading checkpoints from anywhere into our key layout.

Sources: our `model.pt` and DeepSpeed checkpoint folders; official VideoMAE v1 / V2 `.pth` files
(weights under `model` or `module`, optional `encoder.` / `backbone.` / `_orig_mod.` / `module.`
prefixes, pretraining or fine-tuned layouts, V2 files without a decoder); MAE-ST checkpoints
(separate q/k/v, separable learned position embeddings, cls token, fine-tuned `norm` after pooling); HF transformers VideoMAE folders or
state dicts. Every file loads with `torch.load(..., weights_only=True)`, DeepSpeed folders included
(consolidated by `zero.py`, not by DeepSpeed's own unpickling).
"""
from __future__ import annotations

import json
import os
import re

import torch

from .hf import from_hf_state_dict

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
PREFIXES = ("module.", "_orig_mod.", "backbone.")


class CheckpointError(ValueError):
    pass


def read_state_dict(path: str | os.PathLike) -> tuple[dict, dict]:
    """(state dict as stored, metadata) from a file or folder."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        return _read_folder(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path), {"source": "safetensors"}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot load {path} with weights_only=True ({err}); only plain tensor "
                              "checkpoints are read, never pickled code") from err
    return unwrap(obj, path)


def unwrap(obj, where: str = "checkpoint") -> tuple[dict, dict]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict of tensors, got {type(obj).__name__}")
    meta = {k: v for k, v in obj.items() if not torch.is_tensor(v) and k not in WRAPPER_KEYS}
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], dict):
            return obj[key], meta
    if all(torch.is_tensor(v) for v in obj.values()):
        return obj, {}
    raise CheckpointError(f"{where}: no weights found (looked for keys {WRAPPER_KEYS} or a flat dict of "
                          "tensors)")


def _read_folder(path: str) -> tuple[dict, dict]:
    # HF transformers save_pretrained folder
    for name in ("model.safetensors", "pytorch_model.bin"):
        file = os.path.join(path, name)
        if os.path.exists(file):
            state, _ = read_state_dict(file)
            config = json.load(open(os.path.join(path, "config.json"))) if os.path.exists(
                os.path.join(path, "config.json")) else {}
            return state, {"source": "hf", "hf_config": config}
    # one of our run folders, or a DeepSpeed checkpoint folder
    if os.path.exists(os.path.join(path, "model.pt")):
        return read_state_dict(os.path.join(path, "model.pt"))
    from .zero import ZeroCheckpointError, read_deepspeed_folder

    folder = _deepspeed_tag_folder(path)
    if folder is not None:
        try:  # weights-only, never DeepSpeed's own consolidation: that one unpickles arbitrary objects
            return read_deepspeed_folder(folder), {"source": "deepspeed"}
        except ZeroCheckpointError as err:
            raise CheckpointError(str(err)) from None
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):   # DeepSpeed's own marker, as an official output_dir has it
        tag = open(latest).read().strip()
        raise CheckpointError(f"{path}: its DeepSpeed `latest` names {tag!r}, which holds no *_model_states.pt "
                              "(point at the tag folder you want)")
    raise CheckpointError(f"{path}: not a checkpoint folder (no model.safetensors, pytorch_model.bin, "
                          "model.pt or DeepSpeed checkpoint)")


def _deepspeed_tag_folder(path: str) -> str | None:
    """The DeepSpeed tag folder `path` means: itself, or the newest complete tag of our run folder
    (`path/checkpoints`) or checkpoint folder, or the tag DeepSpeed's own `latest` file names."""
    from ..engine.checkpoint import latest_tag
    from .zero import is_deepspeed_folder

    if is_deepspeed_folder(path):
        return path
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    tag = latest_tag(ckpt_dir)
    if tag is None and os.path.isfile(os.path.join(ckpt_dir, "latest")):
        tag = open(os.path.join(ckpt_dir, "latest")).read().strip()
        if not tag or os.path.basename(tag) != tag or tag in (".", ".."):  # a name inside ckpt_dir only
            tag = None
    if tag and is_deepspeed_folder(os.path.join(ckpt_dir, tag)):
        return os.path.join(ckpt_dir, tag)
    return None


def strip_prefixes(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def detect_format(state: dict) -> str:
    keys = set(state)
    if any(k.startswith("videomae.") for k in keys):
        return "hf"
    if any("pos_embed_spatial" in k for k in keys) or any(re.search(r"blocks\.\d+\.attn\.q\.weight", k) for k in keys):
        return "maest"
    return "videomae"


def from_maest(state: dict) -> dict:
    """MAE-ST names -> ours. Its attention has separate q/k/v with biases; the key bias adds the
    same q.b_k to every logit of a query row, which softmax ignores, so it is dropped exactly.

    A fine-tuned MAE-ST model (a head, no fc_norm) pools first and then applies `norm`: that norm
    is our `fc_norm` (the encoder has no final norm). `cls_token` and `pos_embed_class` keep their
    names: the loader folds them into one cls token, or refuses a model without one."""
    out, qkv = {}, {}
    finetuned = "head.weight" in state and "fc_norm.weight" not in state
    for key, value in state.items():
        if finetuned and key.startswith("norm."):
            key = "fc_norm." + key[len("norm."):]
        m = re.match(r"(blocks\.\d+)\.attn\.(q|k|v)\.(weight|bias)$", key)
        if m:
            qkv.setdefault(m.group(1), {})[(m.group(2), m.group(3))] = value
            continue
        # decoder_*, cls_token, pos_embed_class keep their names (decoder_* are reported as dropped)
        out[f"pos_embed.{key}" if key in ("pos_embed_spatial", "pos_embed_temporal") else key] = value
    for block, parts in qkv.items():
        out[f"{block}.attn.qkv.weight"] = torch.cat([parts[("q", "weight")], parts[("k", "weight")],
                                                     parts[("v", "weight")]])
        if ("q", "bias") in parts:
            out[f"{block}.attn.q_bias"] = parts[("q", "bias")]
            out[f"{block}.attn.v_bias"] = parts[("v", "bias")]
            out[f"{block}.attn.k_bias_dropped"] = parts[("k", "bias")]
    return out


def canonical_state(state: dict) -> tuple[dict, str]:
    """Any supported layout -> our key names (pretraining keys keep their `encoder.` prefix)."""
    state = strip_prefixes(state)
    fmt = detect_format(state)
    if fmt == "hf":
        return from_hf_state_dict(state), fmt
    if fmt == "maest":
        return from_maest(state), fmt
    return state, fmt
