"""What the host needs from the training step, without waiting for the device on every step.

The loss, whether it was finite, and how many micro-steps there were are summed in one device
tensor; the host reads it once per `TRAIN.LOG_PERIOD` (one all-reduce and one read then), and
host counts that the ranks combine at log steps (bad-video loads) ride along in that all-reduce. A
non-finite loss never reaches the weights: the step's flag (any micro-step, any rank) goes to the
fused optimizer as `found_inf`, which skips the update on the device, as it does under a
GradScaler; the host learns of it at the next read. The preemption flag is host state (a signal
handler); ranks agree on it through an asynchronous all-reduce on a CPU group, read one step later.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def innermost_optimizer(optimizer):
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO keeps it as `.optimizer`)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def skips_on_device(optimizer) -> bool:
    """Fused torch optimizers honour `found_inf`; the others would apply the update regardless."""
    return isinstance(optimizer, torch.optim.Optimizer) and bool(optimizer.defaults.get("fused"))


class StepStats:
    def __init__(self, device, world_size: int):
        self.world_size = world_size
        self.totals = torch.zeros(3, device=device)        # loss sum, micro-steps, non-finite micro-steps
        self.found_inf = torch.zeros((), device=device)    # this optimizer step: any non-finite loss (0-dim,
                                                           # as GradScaler hands it to fused optimizers)

    def add(self, loss: torch.Tensor) -> None:
        """Per micro-step, before backward; no host read."""
        loss = loss.detach().float().reshape(1)
        bad = ~torch.isfinite(loss)
        self.totals.add_(torch.cat([torch.where(bad, 0.0, loss), torch.ones_like(loss), bad.float()]))
        self.found_inf.logical_or_(bad[0])

    def guard(self, optimizer) -> None:
        """Before the step that updates the weights: every rank skips it if any rank saw a
        non-finite loss (the gradients were all-reduced, so they are bad everywhere)."""
        if self.world_size > 1:
            dist.all_reduce(self.found_inf, op=dist.ReduceOp.MAX)
        innermost_optimizer(optimizer).found_inf = self.found_inf

    def step_done(self) -> None:
        # in place: the optimizer step queued before this reads the flag first (same stream)
        self.found_inf.zero_()

    def pending_non_finite(self) -> bool:
        """Before a checkpoint: was any loss since the last read non-finite, on any rank?"""
        count = self.totals[2:3].clone()
        if self.world_size > 1:
            dist.all_reduce(count)
        return bool(count.item())

    def read(self, extra=()) -> dict:
        """The period's mean loss and non-finite count over all ranks: one all-reduce, one host read.
        `extra`: host numbers that ride along in the same all-reduce (the bad-video counts); their
        sums over ranks come back as `extra` (float32: exact up to 2^24 per period)."""
        values = self.totals
        if extra:
            values = torch.cat([self.totals, torch.tensor(extra, dtype=self.totals.dtype).to(self.totals.device)])
        if self.world_size > 1:
            dist.all_reduce(values)
        loss_sum, micro_steps, non_finite, *rest = values.tolist()
        self.totals.zero_()
        good = micro_steps - non_finite
        return {"loss": loss_sum / good if good else float("nan"), "non_finite": int(non_finite), "extra": rest}


class PreemptionVote:
    """Whether any rank was signalled, agreed without a device sync: world size 1 reads the flag;
    more ranks all-reduce it on a CPU (gloo) group, asynchronously, and use the result one step
    later, so a signal is acted on within one step."""

    def __init__(self, world_size: int):
        self.world_size, self.pending = world_size, None
        self.group = None
        if world_size > 1:
            self.group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def __call__(self, requested: bool) -> bool:
        if self.world_size == 1:
            return requested
        agreed = False
        if self.pending is not None:
            work, flag = self.pending
            work.wait()
            agreed = bool(flag.numpy()[0])
        flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
        self.pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True), flag)
        return agreed

    def close(self) -> None:
        if self.pending is not None:
            self.pending[0].wait()
            self.pending = None
