"""DeepSpeed checkpoint folders read without running anything they hold.

DeepSpeed's own consolidation (`deepspeed.utils.zero_to_fp32`) unpickles every file with
`weights_only=False`, so a folder someone hands you could run code. This reader gives the same
fp32 state dict (bit for bit: the same slices of the same fp32 master copies) from files read with
`torch.load(..., weights_only=True)`:

    ZeRO 1 / 2   mp_rank_00_model_states.pt  + (bf16_)zero_pp_rank_<r>_mp_rank_00_optim_states.pt
    ZeRO 3       zero_pp_rank_<r>_mp_rank_00_model_states.pt + zero_pp_rank_<r>_mp_rank_00_optim_states.pt
    no ZeRO      mp_rank_00_model_states.pt (its `module` weights as stored)

The tensors are plain; around them DeepSpeed pickles a few objects of its own (the ZeRO stage
enum, loss scalers, fragment addresses of the bf16 optimizer). A weights-only load refuses those,
so each `deepspeed.*` name a file refers to is read as an inert record (`DeepSpeedRecord`), never
imported; any other name outside torch's weights-only allowlist is refused.
"""
from __future__ import annotations

import glob
import math
import os
import re

import torch

DEEPSPEED_PREFIX = "deepspeed."


class ZeroCheckpointError(ValueError):
    pass


class DeepSpeedRecord:
    """Stands in for a DeepSpeed object in a checkpoint. Why this is safe: the unpickler builds it
    from a name through this class only (the named class is never imported, so no code of it runs);
    constructing it stores the arguments and `__setstate__` stores the state, nothing else. The
    fields read from a checkpoint are tensors, ints and shapes, never these records."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        record.args, record.state = args, None
        return record

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.qualified_name}{self.args!r}>"


def _record_type(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (DeepSpeedRecord,), {"qualified_name": name})


def load_weights_only(path: str, mmap: bool = True):
    """`torch.load(path, weights_only=True)` with DeepSpeed's own objects read as inert records."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # not a zip-format torch file
        raise ZeroCheckpointError(f"{path}: not a torch checkpoint file ({err})") from None
    foreign = [name for name in names if not name.startswith(DEEPSPEED_PREFIX)]
    if foreign:
        raise ZeroCheckpointError(f"{path} refers to {foreign[0]}: only tensors, plain values and DeepSpeed's "
                                  "own records are read from a checkpoint, nothing it names is run")
    try:
        with torch.serialization.safe_globals([(_record_type(name), name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise ZeroCheckpointError(f"cannot load {path} with weights_only=True ({err})") from None


def _natural(text: str) -> list:
    # rank 10 after rank 9, as DeepSpeed orders the shards
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _files(folder: str, suffix: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), f"*_{suffix}.pt")), key=_natural)


def is_deepspeed_folder(folder: str) -> bool:
    return bool(_files(folder, "model_states"))


def read_deepspeed_folder(folder: str) -> dict:
    """The full fp32 state dict of one DeepSpeed checkpoint tag folder (module keys as stored)."""
    model_files, optim_files = _files(folder, "model_states"), _files(folder, "optim_states")
    if not model_files:
        raise ZeroCheckpointError(f"{folder}: no *_model_states.pt file (not a DeepSpeed checkpoint folder)")
    try:
        models = [load_weights_only(f) for f in model_files]
        if not optim_files:  # no ZeRO partitions: the module holds the full weights
            return _tensors(models[0]["module"], model_files[0])
        optims = [load_weights_only(f)["optimizer_state_dict"] for f in optim_files]
        return _consolidate(models, optims, len(optim_files))
    except ZeroCheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, RuntimeError) as err:
        raise ZeroCheckpointError(f"{folder}: not a DeepSpeed ZeRO checkpoint this reader understands "
                                  f"({type(err).__name__}: {err})") from None


def _tensors(state, where: str) -> dict:
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ZeroCheckpointError(f"{where}: its `module` is not a dict of tensors")
    return dict(state)


def _world_size(optims: list, files: int) -> int:
    counts = optims[0]["partition_count"]
    # ZeRO-2 may give each param group its own count (expert parallelism): the largest is the dp size
    world = max(counts) if isinstance(counts, (list, tuple)) else counts
    if world != files:
        raise ZeroCheckpointError(f"the optimizer state is partitioned over {world} ranks but {files} "
                                  "*_optim_states.pt files are present (an incomplete or overwritten checkpoint)")
    return world


def _consolidate(models: list, optims: list, files: int) -> dict:
    """DeepSpeed's protocol, stage by stage: buffers (as fp32), frozen parameters, trainable
    parameters from the fp32 master partitions, then parameters shared with another name."""
    world = _world_size(optims, files)
    first = models[0]
    buffer_names = set(first["buffer_names"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in first["module"].items() if k in buffer_names}
    if "fp32_flat_groups" in optims[0]:
        _zero3_frozen(state, models)
        _zero3_trainable(state, first["param_shapes"], [torch.cat(list(o["fp32_flat_groups"]), 0) for o in optims],
                         world)
    elif "single_partition_of_fp32_groups" in optims[0]:
        _zero12_frozen(state, first)
        _zero12_trainable(state, first["param_shapes"], [o["single_partition_of_fp32_groups"] for o in optims],
                          world, optims[0].get("param_alignment_paddings"))
    else:
        raise ZeroCheckpointError("the optimizer state holds no fp32 master partitions "
                                  "(single_partition_of_fp32_groups or fp32_flat_groups)")
    for name, partner in dict(first.get("shared_params") or {}).items():
        if partner in state:
            state[name] = state[partner]
    out, seen = {}, {}
    for name, tensor in state.items():  # shared parameters stay one tensor
        out[name] = seen.setdefault(id(tensor), tensor.contiguous())
    return out


def _numel(shape) -> int:
    return math.prod(shape)


def _zero12_frozen(state: dict, first: dict) -> None:
    for name in dict(first.get("frozen_param_shapes") or {}):
        state[name] = first["frozen_param_fragments"][name]


def _zero12_trainable(state: dict, param_shapes: list, partitions: list, world: int, paddings) -> None:
    """Each param group is one flat fp32 vector cut into equal rank partitions, parameters in order."""
    for group, shapes in enumerate(param_shapes):
        flat = torch.cat([rank[group] for rank in partitions], 0)
        pads = paddings[group] if paddings is not None else None
        if pads is not None and len(pads) != len(shapes):
            raise ZeroCheckpointError(f"param group {group}: {len(shapes)} parameters but {len(pads)} paddings")
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = _numel(shape)
            state[name] = flat.narrow(0, offset, numel).view(shape)
            offset += numel + (pads[index] if pads is not None else 0)
        # the flat vector is padded to a multiple of 2 x world size
        align = 2 * world
        if math.ceil(offset / align) != math.ceil(flat.numel() / align):
            raise ZeroCheckpointError(f"param group {group}: the shapes use {offset} values of {flat.numel()}")


def _zero3_frozen(state: dict, models: list) -> None:
    for name, shape in dict(models[0].get("frozen_param_shapes") or {}).items():
        parts = [m["frozen_param_fragments"][name] for m in models]
        state[name] = torch.cat(parts, 0).narrow(0, 0, _numel(shape)).view(shape)


def _zero3_trainable(state: dict, param_shapes: list, flats: list, world: int) -> None:
    """Every parameter is split into `world` equal padded pieces, rank r's piece at the same offset
    of rank r's flat vector."""
    offset = 0
    for name, shape in ((k, v) for group in param_shapes for k, v in group.items()):
        numel = _numel(shape)
        piece = math.ceil(numel / world)
        state[name] = torch.cat([flat.narrow(0, offset, piece) for flat in flats], 0).narrow(0, 0, numel).view(shape)
        offset += piece
    if offset != flats[0].numel():
        raise ZeroCheckpointError(f"the shapes use {offset * world} values of {flats[0].numel() * world}")
