"""HF transformers VideoMAE <-> our key layout.

HF splits the fused `qkv` into `query` / `key` / `value`. How it holds the attention biases
depends on the transformers version, so the export asks the installed class for its keys
(`hf_model_keys`) instead of assuming one layout:

- `q_bias` / `v_bias` parameters, bias-free `query` / `key` / `value` (4.x);
- `query.bias` / `key.bias` / `value.bias` (some 5.x releases: a key bias ours does not have;
  it is written as zeros);
- `query.bias` / `value.bias`, bias-free `key` (newer 5.x; the official VideoMAE attention).

The importer reads all three. A non-zero `key.bias` (training makes it non-zero) is dropped
exactly: it adds the same q.b_k to every logit of a query row, which softmax ignores.

LayerNorm eps: HF's config `layer_norm_eps` (default 1e-12; ours 1e-6, written into the exported
config) governs the block norms and the encoder's final norm, and the importer applies it.
HF hard-codes eps 1e-5 in `decoder.norm` and `fc_norm` (ours 1e-6); those stay as ours, which
moves outputs by about 1e-6 relative.
"""
from __future__ import annotations

import re

import torch

# per-block renames (ours -> HF), the fused qkv handled separately
_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def _prefixes(kind: str) -> dict[str, str]:
    """Top-level renames (ours -> HF) for the pretraining model or the classifier."""
    if kind == "pretrain":
        return {"encoder.patch_embed.proj": "videomae.embeddings.patch_embeddings.projection",
                "encoder.norm": "videomae.layernorm",
                "encoder_to_decoder": "encoder_to_decoder", "mask_token": "mask_token",
                "decoder.norm": "decoder.norm", "decoder.head": "decoder.head"}
    if kind == "classifier":
        return {"patch_embed.proj": "videomae.embeddings.patch_embeddings.projection",
                "norm": "videomae.layernorm", "fc_norm": "fc_norm", "head": "classifier"}
    raise ValueError(f"kind must be 'pretrain' or 'classifier', got {kind!r}")


def _block_roots(kind: str) -> dict[str, str]:
    if kind == "pretrain":
        return {"encoder.blocks": "videomae.encoder.layer", "decoder.blocks": "decoder.decoder_layers"}
    return {"blocks": "videomae.encoder.layer"}


ATTN = "attention.attention."
HF_LAYER_NORM_EPS_DEFAULT = 1e-12   # VideoMAEConfig's default; save_pretrained omits it from config.json


def attention_layout(keys) -> dict:
    """`to_hf_state_dict` arguments for the attention layout a set of HF keys uses."""
    return {"bias_style": "q_bias" if any(k.endswith(ATTN + "q_bias") for k in keys) else "query.bias",
            "key_bias": any(k.endswith(ATTN + "key.bias") for k in keys)}


def to_hf_state_dict(state: dict, kind: str, bias_style: str = "query.bias", key_bias: bool = False) -> dict:
    """Our state dict -> HF `VideoMAEForPreTraining` (kind="pretrain") or
    `VideoMAEForVideoClassification` (kind="classifier") keys, in the given attention layout:
    `bias_style` "q_bias" (`q_bias`/`v_bias`) or "query.bias" (`query.bias`/`value.bias`), and
    `key_bias` for layouts with a `key.bias` (written as zeros). `export_hf` picks the layout of
    the installed transformers."""
    if bias_style not in ("q_bias", "query.bias"):
        raise ValueError(f"bias_style must be 'q_bias' or 'query.bias', got {bias_style!r}")
    if bias_style == "q_bias" and key_bias:
        raise ValueError("no HF layout has q_bias/v_bias together with a key bias")
    if any(".gamma_" in k for k in state):
        raise ValueError("HF VideoMAE has no layer scale; this model has gamma_1/gamma_2 parameters")
    out, roots, tops = {}, _block_roots(kind), _prefixes(kind)
    for key, value in state.items():
        m = re.match(r"(.+)\.(\d+)\.(.+)$", key)
        if m and m.group(1) in roots:
            root, idx, rest = roots[m.group(1)], m.group(2), m.group(3)
            layer = f"{root}.{idx}.{ATTN}"
            if rest == "attn.qkv.weight":
                q, k, v = value.chunk(3, dim=0)
                for name, part in (("query", q), ("key", k), ("value", v)):
                    out[f"{layer}{name}.weight"] = part.clone()
                continue
            if rest in ("attn.q_bias", "attn.v_bias"):
                which = rest[5]
                if bias_style == "q_bias":
                    out[f"{layer}{which}_bias"] = value
                else:
                    out[f"{layer}{'query' if which == 'q' else 'value'}.bias"] = value
                if which == "q" and key_bias:  # HF's biases come all three or none
                    out[f"{layer}key.bias"] = torch.zeros_like(value)
                continue
            module, _, leaf = rest.rpartition(".")
            if module not in _BLOCK:
                raise KeyError(f"no HF equivalent for {key!r}")
            out[f"{root}.{idx}.{_BLOCK[module]}.{leaf}"] = value
            continue
        module, _, leaf = key.rpartition(".")
        if key in tops:                      # parameters without a leaf name (mask_token)
            out[tops[key]] = value
        elif module in tops:
            out[f"{tops[module]}.{leaf}"] = value
        else:
            raise KeyError(f"no HF equivalent for {key!r}")
    return out


def from_hf_state_dict(state: dict, kind: str | None = None) -> dict:
    """HF VideoMAE keys (any layout of `attention_layout`) -> ours. `kind` is inferred from the
    keys when not given. A `key.bias` comes back as `...attn.k_bias_dropped`, which
    `load_checkpoint` drops with a note (softmax-invariant)."""
    if kind is None:
        kind = "pretrain" if any(k.startswith("decoder.") or k == "mask_token" for k in state) else "classifier"
    hf_roots = {v: k for k, v in _block_roots(kind).items()}
    hf_tops = {v: k for k, v in _prefixes(kind).items()}
    hf_block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = re.match(r"(.+)\.(\d+)\.(.+)$", key)
        if m and m.group(1) in hf_roots:
            layer = f"{hf_roots[m.group(1)]}.{m.group(2)}."
            rest = m.group(3)
            att = re.match(r"attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
            if att:
                name, leaf = att.groups()
                if leaf == "weight":
                    pending.setdefault(layer, {})[name] = value
                elif name == "key":
                    out[f"{layer}attn.k_bias_dropped"] = value
                else:
                    out[f"{layer}attn.{name[0]}_bias"] = value
                continue
            if rest in ("attention.attention.q_bias", "attention.attention.v_bias"):
                out[f"{layer}attn.{rest[-6]}_bias"] = value
                continue
            module, _, leaf = rest.rpartition(".")
            if module not in hf_block:
                raise KeyError(f"unexpected HF key {key!r}")
            out[f"{layer}{hf_block[module]}.{leaf}"] = value
            continue
        if key in ("position_embeddings", "videomae.embeddings.position_embeddings"):
            continue  # fixed sinusoid, rebuilt by our model
        module, _, leaf = key.rpartition(".")
        if key in hf_tops:
            out[hf_tops[key]] = value
        elif module in hf_tops:
            out[f"{hf_tops[module]}.{leaf}"] = value
        else:
            raise KeyError(f"unexpected HF key {key!r}")
    for layer, parts in pending.items():
        missing = {"query", "key", "value"} - set(parts)
        if missing:
            raise KeyError(f"{layer}: HF attention weights {sorted(missing)} are missing")
        out[f"{layer}attn.qkv.weight"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _eps_governed_norms(model) -> dict:
    """Our LayerNorms whose HF counterparts use the config's `layer_norm_eps`: the block norms
    (`layernorm_before/after`, encoder and decoder) and the encoder's final norm
    (`videomae.layernorm`). `fc_norm` and `decoder.norm` are not: HF hard-codes 1e-5 there."""
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
            and (name.endswith((".norm1", ".norm2")) or name in ("norm", "encoder.norm"))}


def apply_hf_layer_norm_eps(model, hf_config: dict) -> list:
    """Set the eps of `model`'s LayerNorms to the HF config's `layer_norm_eps` (absent from a
    config.json when it is HF's default, 1e-12). Returns `LoadReport.adapted` entries."""
    if not hf_config or hf_config.get("model_type", "videomae") != "videomae":
        return []
    eps = float(hf_config.get("layer_norm_eps", HF_LAYER_NORM_EPS_DEFAULT))
    norms = _eps_governed_norms(model)
    changed = {m.eps for m in norms.values() if m.eps != eps}
    if not changed:
        return []
    for module in norms.values():
        module.eps = eps
    before = ", ".join(f"{e:g}" for e in sorted(changed))
    return [("LayerNorm eps", f"{before} -> {eps:g} in {len(norms)} norms (HF config layer_norm_eps)")]


def hf_config_kwargs(model) -> dict:
    """`transformers.VideoMAEConfig` arguments that describe one of our models."""
    from ..models import PretrainVideoMAE

    pretrain = isinstance(model, PretrainVideoMAE)
    enc = model.cfg.encoder if pretrain else model.cfg
    if enc.pos_embed != "sinusoid":
        raise ValueError("HF VideoMAE supports only the fixed sinusoid position embedding")
    if enc.init_values > 0:
        raise ValueError("HF VideoMAE has no layer scale (init_values must be 0)")
    if enc.cls_token:
        raise ValueError("HF VideoMAE has no cls token (this model has MAE-ST's, cls_token=True)")
    target = getattr(model, "target", None) if pretrain else None
    if target is not None and target.name not in ("pixel", "pixel_raw"):
        raise ValueError(f"HF VideoMAE reconstructs pixels; this model's decoder predicts {target.name} targets "
                         "(MODEL.TARGET): export its encoder as a classifier instead")
    if not pretrain and model.pool == "skip_first":
        raise ValueError("HF VideoMAE pools all tokens or token 0, not MAE-ST's tokens 1: (pool='skip_first')")
    # the eps the model runs with (an HF import may have set it from that config), not the cfg's
    eps = {m.eps for m in _eps_governed_norms(model).values()}
    if len(eps) != 1:
        raise ValueError(f"HF VideoMAE has one layer_norm_eps; this model's block norms use {sorted(eps)}")
    kwargs = dict(
        image_size=enc.img_size, patch_size=enc.patch_size, num_channels=enc.in_chans,
        num_frames=enc.num_frames, tubelet_size=enc.tubelet_size, hidden_size=enc.embed_dim,
        num_hidden_layers=enc.depth, num_attention_heads=enc.num_heads,
        intermediate_size=int(enc.embed_dim * enc.mlp_ratio), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=eps.pop(),
        qkv_bias=enc.qkv_bias, use_mean_pooling=not pretrain and model.fc_norm is not None,
    )
    if pretrain:
        cfg = model.cfg
        kwargs.update(decoder_hidden_size=cfg.decoder_embed_dim,
                      decoder_num_hidden_layers=cfg.decoder_depth,
                      decoder_num_attention_heads=cfg.decoder_num_heads,
                      decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.decoder_mlp_ratio),
                      norm_pix_loss=target.name == "pixel" if target is not None else cfg.norm_target)
    else:
        kwargs.update(num_labels=model.num_classes)
    return kwargs


def hf_class(kind: str):
    import transformers

    return transformers.VideoMAEForPreTraining if kind == "pretrain" else transformers.VideoMAEForVideoClassification


def hf_model_keys(config, kind: str) -> dict:
    """{key: shape} of the installed transformers' VideoMAE model for `config`, read from the
    class itself, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        model = hf_class(kind)(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_hf_keys(state: dict, expected: dict, what: str = "HF export") -> None:
    """Raise a ValueError unless `state` has exactly the keys and shapes in `expected`."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or extra or shapes:
        import transformers

        parts = [f"{name} {keys[:4]}{f' (+{len(keys) - 4} more)' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)) if keys]
        raise ValueError(f"{what} does not match transformers {transformers.__version__}'s VideoMAE: "
                         + "; ".join(parts))


def export_hf(model, folder: str) -> str:
    """Write `model` as a HF transformers folder (`config.json` + `model.safetensors`) that
    `VideoMAEForPreTraining` / `VideoMAEForVideoClassification.from_pretrained` of the installed
    transformers load with no missing or unexpected keys."""
    import os

    import transformers
    from safetensors.torch import save_file

    from ..models import PretrainVideoMAE

    kind = "pretrain" if isinstance(model, PretrainVideoMAE) else "classifier"
    config = transformers.VideoMAEConfig(**hf_config_kwargs(model))
    config.architectures = [hf_class(kind).__name__]
    expected = hf_model_keys(config, kind)
    state = to_hf_state_dict(model.state_dict(), kind, **attention_layout(expected))
    check_hf_keys(state, expected)
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder
