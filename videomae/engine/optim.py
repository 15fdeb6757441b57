"""Parameter groups (weight-decay exclusions, layer-wise lr decay) and the per-step lr schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

# never decayed: biases and norm weights (1-D), position tables and learned tokens
NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token")


def no_weight_decay(name: str, param) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or any(n in name for n in NO_DECAY_NAMES)


def layer_id(name: str, num_layers: int) -> int:
    """Layer index for layer decay: embeddings 0, block k -> k + 1, everything after -> L + 1."""
    name = name.removeprefix("encoder.")
    if name.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 num_layers: int | None = None) -> list[dict]:
    """Groups keyed by (decay?, layer); each carries `lr_scale` = layer_decay ** (L + 1 - layer)."""
    groups: dict[tuple, dict] = {}
    by_layer = layer_decay != 1.0 and bool(num_layers)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if no_weight_decay(name, param) else weight_decay
        layer = layer_id(name, num_layers) if by_layer else 0
        scale = layer_decay ** (num_layers + 1 - layer) if by_layer else 1.0
        group = groups.setdefault((decay, layer), {"params": [], "names": [], "weight_decay": decay,
                                                   "lr_scale": scale})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float,
              warmup_lr: float = 0.0) -> float:
    """Linear warmup from `warmup_lr`, then half-cosine from `base_lr` to `min_lr`, per step."""
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


OPTIMIZERS = ("adamw", "adamw_foreach", "adamw_loop")


def build_optimizer(name: str, groups: list[dict], lr: float, betas, eps: float, device) -> torch.optim.Optimizer:
    """AdamW over the parameter groups. `adamw` is torch's fused kernel where the device has one
    (CUDA; CPU from torch 2.4): one launch for all parameters, and it skips a step on the device
    when told the loss was not finite. `adamw_foreach` batches by tensor lists; `adamw_loop` is
    the per-parameter reference."""
    kwargs = dict(lr=lr, betas=tuple(betas), eps=eps)
    if name == "adamw" and _fused_supported(device):
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    if name in ("adamw", "adamw_foreach"):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    if name == "adamw_loop":
        return torch.optim.AdamW(groups, foreach=False, **kwargs)
    raise ValueError(f"TRAIN.OPTIMIZER {name!r} is not one of {OPTIMIZERS}")


def _fused_supported(device) -> bool:
    try:
        probe = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([probe], fused=True)
        return True
    except (RuntimeError, ValueError):
        return False
