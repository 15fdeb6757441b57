"""ZeRO stage 0 without DeepSpeed's wrapper: the step a careful user writes by hand, behind the
interface the training loop uses with DeepSpeed's engine.

DDP (on more than one process) with gradient buckets as views of the gradients, gradient
accumulation with `no_sync` until the last micro-step, optional clipping, the fused optimizer.
Measured with `benchmarks/engine_step.py` (docs/benchmarks.md): DeepSpeed's stage-0 engine
dispatched 1.27x the aten ops of this step per optimizer step (per-parameter flatten / unflatten
copies around its all-reduce, even on one process). Stages 1-3 shard optimizer state and stay
with DeepSpeed; fp16 (loss scaling) does too.

Checkpoints keep DeepSpeed's stage-0 layout (`<tag>/mp_rank_00_model_states.pt` holding `module`,
`optimizer` and the client state), so the converters read them like any DeepSpeed folder, and a
stage-0 run resumes on any number of processes (nothing is sharded).
"""
from __future__ import annotations

import os

import torch

from .run_folder import temp_name

MODEL_STATES = "mp_rank_00_model_states.pt"


class PlainEngine:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 accum_steps: int, clip_grad: float, world_size: int, rank: int):
        self.module, self.optimizer, self.device = model.to(device), optimizer, device
        self.accum, self.clip, self.rank = accum_steps, clip_grad, rank
        self.micro_steps = 0
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.ddp = None
        if world_size > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device.index] if device.type == "cuda" else None,
                gradient_as_bucket_view=True, broadcast_buffers=False)
        self._forward = self.ddp or self.module
        self.is_compiled = False

    # -- what the loop and the tasks call ------------------------------------------------------
    def __call__(self, *args, **kwargs):
        if self.ddp is not None:  # what `no_sync()` sets: all-reduce only on the last micro-step
            self.ddp.require_backward_grad_sync = self.is_gradient_accumulation_boundary()
        return self._forward(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum if self.accum > 1 else loss).backward()  # the mean over micro-steps, as DeepSpeed

    def step(self) -> None:
        boundary = self.is_gradient_accumulation_boundary()
        self.micro_steps += 1
        if not boundary:
            return
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)  # foreach on GPUs; no host read
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.accum == 0

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def compile(self) -> None:
        self._forward = torch.compile(self.ddp or self.module)
        self.is_compiled = True

    def zero_optimization_stage(self) -> int:
        return 0

    def bfloat16_enabled(self) -> bool:
        return False  # bf16 is autocast over fp32 weights

    def fp16_enabled(self) -> bool:
        return False

    # -- checkpoints, in DeepSpeed's stage-0 layout ----------------------------------------------
    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool = False) -> None:
        if self.rank != 0:
            return  # nothing is sharded: one copy is the whole state
        folder = os.path.join(save_dir, tag)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, MODEL_STATES)
        tmp = temp_name(path)
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(), **client_state}, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, load_dir: str, tag: str, load_module_strict: bool = True,
                        load_optimizer_states: bool = True, **_ignored) -> tuple[str | None, dict]:
        path = os.path.join(load_dir, tag, MODEL_STATES)
        if not os.path.exists(path):
            return None, {}
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state.pop("module"), strict=load_module_strict)
        optimizer_state = state.pop("optimizer", None)
        if load_optimizer_states and optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        return os.path.join(load_dir, tag), state
