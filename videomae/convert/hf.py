"""HF transformers VideoMAE <-> our key layout.

HF splits the fused `qkv` into `query` / `key` / `value` and holds the q/v biases as
`query.bias` / `value.bias` in memory (files from older versions may hold `q_bias` / `v_bias`);
both spellings are read. Our layout is the official VideoMAE one.

Two differences HF users should know: HF's default `layer_norm_eps` is 1e-12 (ours 1e-6, set in the
exported config) and HF hard-codes eps 1e-5 in `decoder.norm` and `fc_norm` (ours 1e-6), which
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


def to_hf_state_dict(state: dict, kind: str, bias_style: str = "query.bias") -> dict:
    """Our state dict -> HF `VideoMAEForPreTraining` (kind="pretrain") or
    `VideoMAEForVideoClassification` (kind="classifier") keys.
    `bias_style="q_bias"` writes the older on-disk spelling."""
    if any(".gamma_" in k for k in state):
        raise ValueError("HF VideoMAE has no layer scale; this model has gamma_1/gamma_2 parameters")
    out, roots, tops = {}, _block_roots(kind), _prefixes(kind)
    for key, value in state.items():
        m = re.match(r"(.+)\.(\d+)\.(.+)$", key)
        if m and m.group(1) in roots:
            root, idx, rest = roots[m.group(1)], m.group(2), m.group(3)
            layer = f"{root}.{idx}."
            if rest == "attn.qkv.weight":
                q, k, v = value.chunk(3, dim=0)
                for name, part in (("query", q), ("key", k), ("value", v)):
                    out[f"{layer}attention.attention.{name}.weight"] = part.clone()
                continue
            if rest in ("attn.q_bias", "attn.v_bias"):
                which = "q" if rest == "attn.q_bias" else "v"
                name = (f"{which}_bias" if bias_style == "q_bias"
                        else {"q": "query.bias", "v": "value.bias"}[which])
                out[f"{layer}attention.attention.{name}"] = value
                continue
            module, _, leaf = rest.rpartition(".")
            if module not in _BLOCK:
                raise KeyError(f"no HF equivalent for {key!r}")
            out[f"{layer}{_BLOCK[module]}.{leaf}"] = value
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
    """HF VideoMAE keys -> ours. `kind` is inferred from the keys when not given."""
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
                    if value.abs().max() > 0:
                        raise ValueError(f"{key} is non-zero: our attention has no key bias")
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


def hf_config_kwargs(model) -> dict:
    """`transformers.VideoMAEConfig` arguments that describe one of our models."""
    from ..models import PretrainVideoMAE

    pretrain = isinstance(model, PretrainVideoMAE)
    enc = model.cfg.encoder if pretrain else model.cfg
    if enc.pos_embed != "sinusoid":
        raise ValueError("HF VideoMAE supports only the fixed sinusoid position embedding")
    if enc.init_values > 0:
        raise ValueError("HF VideoMAE has no layer scale (init_values must be 0)")
    kwargs = dict(
        image_size=enc.img_size, patch_size=enc.patch_size, num_channels=enc.in_chans,
        num_frames=enc.num_frames, tubelet_size=enc.tubelet_size, hidden_size=enc.embed_dim,
        num_hidden_layers=enc.depth, num_attention_heads=enc.num_heads,
        intermediate_size=int(enc.embed_dim * enc.mlp_ratio), hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=enc.norm_eps,
        qkv_bias=enc.qkv_bias, use_mean_pooling=not pretrain,
    )
    if pretrain:
        cfg = model.cfg
        kwargs.update(decoder_hidden_size=cfg.decoder_embed_dim,
                      decoder_num_hidden_layers=cfg.decoder_depth,
                      decoder_num_attention_heads=cfg.decoder_num_heads,
                      decoder_intermediate_size=int(cfg.decoder_embed_dim * cfg.decoder_mlp_ratio),
                      norm_pix_loss=cfg.norm_target)
    else:
        kwargs.update(num_labels=model.num_classes)
    return kwargs


def export_hf(model, folder: str) -> str:
    """Write `model` as a HF transformers folder (`config.json` + `model.safetensors`) that
    `VideoMAEForPreTraining` / `VideoMAEForVideoClassification.from_pretrained` load."""
    import os

    import transformers
    from safetensors.torch import save_file

    from ..models import PretrainVideoMAE

    kind = "pretrain" if isinstance(model, PretrainVideoMAE) else "classifier"
    config = transformers.VideoMAEConfig(**hf_config_kwargs(model))
    config.architectures = ["VideoMAEForPreTraining" if kind == "pretrain" else "VideoMAEForVideoClassification"]
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in to_hf_state_dict(model.state_dict(), kind).items()}
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder
