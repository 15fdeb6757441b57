"""Measured memory of a DeepSpeed engine's optimizer, per rank."""
from __future__ import annotations

import torch


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def optimizer_state_bytes(engine) -> dict:
    """Bytes this rank holds for the optimizer: Adam moments and, under ZeRO, the fp32 master
    partition. Counted from the tensors themselves, after at least one step."""
    optimizer = engine.optimizer
    base = getattr(optimizer, "optimizer", optimizer)  # ZeRO wraps the torch optimizer
    moments = _tensor_bytes(list(base.state.values()))
    master = 0
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        master += _tensor_bytes(getattr(optimizer, name, []))
    return {"adam_moments": moments, "fp32_master_partition": master}
