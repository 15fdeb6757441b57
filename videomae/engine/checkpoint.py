"""DeepSpeed checkpoints with an atomic "latest complete" marker, auto-resume, and consolidated
fp32 weights (`model.pt`, official VideoMAE key names, loadable with `weights_only=True`).

Layout under OUTPUT_DIR/checkpoints:
    step_00000120/        DeepSpeed's files + COMPLETE (written after every rank finished)
    LATEST                tag of the newest complete checkpoint (written with os.replace)
A job killed mid-save leaves a tag folder without COMPLETE, which resume ignores and the next start
removes (`remove_incomplete`). A save first checks the free space (the previous checkpoint's size, or
an estimate from the model), and a write that fails (disk full, read-only, quota) removes what it
wrote and stops the run with one line naming the folder and the cause, on every rank.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import torch

from .distributed import barrier
from .run_folder import DiskFault, check_free_space, disk_fault, format_bytes, is_temp_name, temp_name, writing

MARKER, LATEST = "COMPLETE", "LATEST"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _atomic_write_text(path: str, text: str) -> None:
    tmp = temp_name(path)
    with writing("the checkpoint marker", path, cleanup=(tmp,)):
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def folder_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def estimate_bytes(engine, ckpt_dir: str) -> int:
    """What the next checkpoint will take: the last one's size, or before the first one the fp32
    weights four times over (weights, AdamW's two moments, and ZeRO's fp32 master copy)."""
    tag = latest_tag(ckpt_dir)
    if tag is not None:
        return folder_bytes(os.path.join(ckpt_dir, tag))
    return 4 * sum(p.numel() * 4 for p in engine.module.parameters())


def _agree(error: str | None) -> str | None:
    """Every rank learns whether any rank failed (the first message), so all stop together."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return error
    errors = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


def _write_failure(err: Exception, path: str) -> str | None:
    """One line for a failed checkpoint write, or None when `err` is not one. torch's zip writer
    reports a full disk as `unexpected pos ...` or `file write failed`, without errno or path."""
    if isinstance(err, OSError):
        return str(disk_fault(err, "checkpoint", path))
    text = str(err)
    if isinstance(err, RuntimeError) and ("unexpected pos" in text or "write failed" in text
                                          or "PytorchStreamWriter" in text):
        probe = path if os.path.exists(path) else os.path.dirname(path)
        free = shutil.disk_usage(probe).free if os.path.exists(probe) else 0
        cause = ("no space left on the device (disk full)" if free < 64 * 2**20
                 else f"the write failed ({format_bytes(free)} free; {text.strip().splitlines()[-1][:120]})")
        return f"cannot write checkpoint {path}: {cause}"
    return None


def save(engine, ckpt_dir: str, step: int, client_state: dict, is_main: bool, keep: int = 2,
         world_size: int = 1) -> str:
    tag = tag_for(step)
    folder = os.path.join(ckpt_dir, tag)
    error = None
    if is_main:
        try:
            with writing("checkpoints in", ckpt_dir):
                os.makedirs(ckpt_dir, exist_ok=True)
                check_free_space(ckpt_dir, int(estimate_bytes(engine, ckpt_dir) * 1.05), f"checkpoint {tag}")
                # rewriting a tag (same step again): it is not complete until this save is
                if os.path.exists(os.path.join(folder, MARKER)):
                    os.remove(os.path.join(folder, MARKER))
        except DiskFault as err:
            error = str(err)
    error = _agree(error)
    if error:
        raise DiskFault(error)
    try:
        engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)
    except (OSError, RuntimeError) as err:
        error = _write_failure(err, folder)
        if error is None:
            raise
    # every rank's shard is on disk (or failed) before the checkpoint is declared complete
    error = _agree(error)
    if error:
        if is_main:  # what the failed save wrote would only take the space a retry needs
            shutil.rmtree(folder, ignore_errors=True)
        barrier()
        raise DiskFault(error)
    if is_main:
        facts = {"step": step, "world_size": world_size, "zero_stage": engine.zero_optimization_stage()}
        _atomic_write_text(os.path.join(folder, MARKER), json.dumps(facts) + "\n")
        _atomic_write_text(os.path.join(ckpt_dir, LATEST), tag)
        for old in complete_tags(ckpt_dir)[:-keep] if keep > 0 else []:
            # the marker goes first: a removal cut short (kill, Ctrl-C) leaves an incomplete folder,
            # which the next start removes, never a "complete" one with files missing
            os.remove(os.path.join(ckpt_dir, old, MARKER))
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
            shutil.rmtree(os.path.join(ckpt_dir, f"{old}_universal"), ignore_errors=True)
    barrier()
    return folder


def remove_incomplete(ckpt_dir: str) -> list[str]:
    """At start, before resuming (rank 0, holding the run lock): tag folders a killed save left
    without COMPLETE, and temp files of killed writes. Returns what was removed."""
    if not os.path.isdir(ckpt_dir):
        return []
    removed = []
    for name in sorted(os.listdir(ckpt_dir)):
        path = os.path.join(ckpt_dir, name)
        if re.fullmatch(r"step_\d{8}(_universal)?", name) and os.path.isdir(path) \
                and not os.path.exists(os.path.join(path, MARKER)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
        elif is_temp_name(name) and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def complete_tags(ckpt_dir: str) -> list[str]:
    if not os.path.isdir(ckpt_dir):
        return []
    tags = [t for t in os.listdir(ckpt_dir)
            if re.fullmatch(r"step_\d{8}", t) and os.path.exists(os.path.join(ckpt_dir, t, MARKER))]
    return sorted(tags)


def latest_tag(ckpt_dir: str) -> str | None:
    """The tag LATEST names if it is complete, else the newest complete one, else None."""
    marker = os.path.join(ckpt_dir, LATEST)
    if os.path.exists(marker):
        tag = open(marker).read().strip()
        if os.path.exists(os.path.join(ckpt_dir, tag, MARKER)):
            return tag
    tags = complete_tags(ckpt_dir)
    return tags[-1] if tags else None


def checkpoint_facts(ckpt_dir: str, tag: str) -> dict:
    return json.loads(open(os.path.join(ckpt_dir, tag, MARKER)).read())


def needs_universal(ckpt_dir: str, world_size: int) -> str | None:
    """The latest tag when it holds ZeRO partitions for another world size (DeepSpeed cannot load
    those directly; its universal format can be loaded at any world size)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    facts = checkpoint_facts(ckpt_dir, tag)
    if facts.get("zero_stage", 0) > 0 and facts.get("world_size", world_size) != world_size:
        return tag
    return None


def convert_to_universal(ckpt_dir: str, tag: str) -> str:
    """Convert `tag` with deepspeed.checkpoint.ds_to_universal into `<tag>_universal` (once)."""
    out_tag = f"{tag}_universal"
    out = os.path.join(ckpt_dir, out_tag)
    if os.path.exists(os.path.join(out, MARKER)):
        return out_tag
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
           os.path.join(ckpt_dir, tag), "--output_folder", out, "--num_extract_workers", "1",
           "--num_merge_workers", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"converting {os.path.join(ckpt_dir, tag)} for a new world size failed:\n"
                           f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
    shutil.copy(os.path.join(ckpt_dir, tag, MARKER), os.path.join(out, MARKER))
    return out_tag


def resume(engine, ckpt_dir: str, tag: str | None = None) -> dict | None:
    """Load the newest complete checkpoint (or `tag`) into the engine; return its client state."""
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(ckpt_dir, tag=tag, load_module_strict=True,
                                                load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(ckpt_dir, tag)}")
    return client_state or {}


def fp32_state_dict(engine, ckpt_dir: str | None = None, tag: str | None = None) -> dict:
    """Full fp32 weights. Without ZeRO sharding or reduced precision the module already holds
    them; otherwise they are rebuilt from the fp32 master copies in a saved checkpoint."""
    stage = engine.zero_optimization_stage()
    if stage == 0 and not (engine.bfloat16_enabled() or engine.fp16_enabled()):
        return {k: v.detach().float().cpu().clone() for k, v in engine.module.state_dict().items()}
    from ..convert.zero import read_deepspeed_folder

    # the same weights-only reader that tools use on folders they are given (equal to DeepSpeed's
    # zero_to_fp32 bit for bit, see tests/test_untrusted.py)
    state = read_deepspeed_folder(os.path.join(ckpt_dir, tag or latest_tag(ckpt_dir)))
    # buffers that are not parameters (non-persistent ones are absent anyway) come from the module
    module_state = engine.module.state_dict()
    return {k: (state[k] if k in state else v.detach().float().cpu()) for k, v in module_state.items()}


def save_model_file(state_dict: dict, path: str, extra: dict | None = None) -> None:
    """`{"model": state_dict, ...}` written atomically; plain tensors, ints and strings only."""
    tmp = temp_name(path)
    needed = sum(v.numel() * v.element_size() for v in state_dict.values())
    with writing("the weights", path, cleanup=(tmp,)):
        check_free_space(os.path.dirname(os.path.abspath(path)), int(needed * 1.05) + 2**20, "model.pt")
        try:
            torch.save({"model": {k: v.contiguous() for k, v in state_dict.items()}, **(extra or {})}, tmp)
        except RuntimeError as err:
            message = _write_failure(err, path)
            if message is None:
                raise
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise DiskFault(message.replace("checkpoint", "the weights", 1)) from None
        os.replace(tmp, path)
