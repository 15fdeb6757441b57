"""The one training loop: DeepSpeed engine, per-step lr, accumulation, checkpoints, auto-resume,
preemption, logs. Tasks (pretraining, fine-tuning, linear probing) plug in model and loss."""
from __future__ import annotations

import atexit
import os
import random
import statistics
import time

import numpy as np
import torch

from .. import seeding
from ..data.decoding import describe_backend
from . import checkpoint as ckpt
from .config import ConfigError, save_config
from .bad_videos import BadVideoLedger
from .data import build_dataset, build_train_loader
from .distributed import barrier, init_distributed
from .logs import RunLogger
from .flops import peak_flops, train_flops_per_clip
from .optim import build_optimizer, cosine_lr, set_lr
from .plain import PlainEngine
from .preemption import Preemption, requeue_slurm_job
from .run_folder import (ConfigChanged, DiskFault, RunFolderError, RunLock, RunLocked, check_resume_config,
                         remove_temp_files, writing)
from .step_stats import PreemptionVote, StepStats, innermost_optimizer, skips_on_device
from .tasks import StepContext


class NonFiniteLoss(RuntimeError):
    pass


class Diverged(RuntimeError):
    """The loss stayed far above its running median: the run stops at the last good checkpoint."""


# the running median of the divergence check: the last this many log steps that were not suspect,
# and at least this many before it judges
DIVERGENCE_WINDOW, DIVERGENCE_MIN_HISTORY = 20, 3


# dynamic loss scaling for fp16: start at 2^16, halve on an overflow (the step is skipped), double
# after 1000 clean steps; DeepSpeed's defaults, written out because the test checks them
FP16_LOSS_SCALE = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                   "min_loss_scale": 1}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def deepspeed_config(cfg, clips_per_micro: int, device) -> dict:
    """bf16 is autocast over fp32 weights, as in plain PyTorch AMP, so DeepSpeed runs in fp32:
    no bf16 weight copies, no loss scaling and no per-parameter overflow checks, and checkpoints
    hold fp32 weights. fp16 keeps DeepSpeed's dynamic loss scaling (GPU only)."""
    precision = cfg.DEEPSPEED.PRECISION
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("DEEPSPEED.PRECISION fp16 needs a GPU; use fp32 or bf16 on CPU")
    zero = {"stage": cfg.DEEPSPEED.ZERO_STAGE}
    if cfg.DEEPSPEED.ZERO_STAGE in (1, 2) and cfg.TRAIN.CLIP_GRAD <= 0:
        zero["compute_grad_norm"] = False  # a per-parameter norm and a host read per step, for nothing
    if cfg.DEEPSPEED.ZERO_STAGE == 1:
        # stage 1 keeps whole gradients: copying each into a contiguous buffer as it is produced only
        # pays off when stage 2 partitions them (fragmentation); measured: 1.58x -> 1.32x the plain
        # step's ops (benchmarks/engine_step.py, docs/benchmarks.md)
        zero["contiguous_gradients"] = False
    if cfg.DEEPSPEED.OFFLOAD_OPTIMIZER and cfg.DEEPSPEED.ZERO_STAGE > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": clips_per_micro,
        "gradient_accumulation_steps": cfg.TRAIN.ACCUM_STEPS,
        "gradient_clipping": cfg.TRAIN.CLIP_GRAD,
        "zero_optimization": zero,
        "fp16": {"enabled": precision == "fp16", **FP16_LOSS_SCALE},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


class Trainer:
    def __init__(self, cfg, task):
        self.cfg, self.task = cfg, task
        self.info, self.device = init_distributed()  # first: it tells DeepSpeed which accelerator
        # catch SLURM's warning signals (and Ctrl-C) from the start: one during set-up is acted on at
        # the first step
        self.preemption = Preemption(announce=self.info.is_main)
        from .quiet import import_deepspeed

        deepspeed = import_deepspeed()

        self.out_dir = cfg.OUTPUT_DIR
        self.ckpt_dir = os.path.join(self.out_dir, "checkpoints")
        self.lock = RunLock(self.out_dir, cfg.TRAIN.BREAK_LOCK) if self.info.is_main else None
        resume_step, notes = self._prepare_run_folder()
        barrier()
        self.log = RunLogger(self.out_dir, self.info.is_main, cfg.LOG.TENSORBOARD, cfg.LOG.PROGRESS,
                             resume_step=resume_step)
        for note in notes:
            self.log.info(note)
        if self.info.is_main and self.log.dropped:
            self.log.info(f"metrics.jsonl: dropped {self.log.dropped} row(s) after step {resume_step} (they run again)")
        seed_everything(cfg.SEED + self.info.rank)

        self.train_set = build_dataset(cfg, task.train_split)
        if self.info.is_main:
            self.log.info(describe_backend(cfg.DATA.BACKEND))
        # bad training videos, counted over the whole run (every worker and rank), listed once
        self.bad_videos = BadVideoLedger(self.train_set.records, cfg.DATA.MAX_BAD_RATIO,
                                         os.path.join(self.out_dir, "bad_videos.txt"), self.info.is_main,
                                         self.info.world_size, self.device, info=self.log.info,
                                         resume=resume_step > 0)
        self.loader, self.sampler = build_train_loader(cfg, self.train_set, self.info.world_size, self.info.rank)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        clips_per_micro = cfg.TRAIN.BATCH_SIZE * cfg.DATA.NUM_REPEATS
        self.total_clips = clips_per_micro * self.info.world_size * cfg.TRAIN.ACCUM_STEPS

        if hasattr(task, "log"):
            task.log = self.log.info
        model = task.build_model()
        if cfg.MODEL.GRAD_CHECKPOINTING:
            model.set_grad_checkpointing(True)
        groups = [{k: v for k, v in g.items() if k != "names"} for g in task.param_groups(model)]
        scale = self.total_clips / 256  # linear lr scaling rule of the published recipes
        self.base_lr, self.min_lr, self.warmup_lr = (cfg.TRAIN.BASE_LR * scale, cfg.TRAIN.MIN_LR * scale,
                                                     cfg.TRAIN.WARMUP_LR * scale)
        optimizer = build_optimizer(cfg.TRAIN.OPTIMIZER, groups, self.base_lr, cfg.TRAIN.BETAS, cfg.TRAIN.EPS,
                                    self.device)
        ds_config = deepspeed_config(cfg, clips_per_micro, self.device)
        self.resume_tag = self._prepare_resume(ds_config)
        if cfg.DEEPSPEED.ZERO_STAGE == 0 and cfg.DEEPSPEED.PRECISION != "fp16":
            self.engine = PlainEngine(model, optimizer, self.device, cfg.TRAIN.ACCUM_STEPS, cfg.TRAIN.CLIP_GRAD,
                                      self.info.world_size, self.info.rank)
        else:
            self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        if cfg.MODEL.COMPILE:
            self.engine.compile()
            if not self.engine.is_compiled:
                raise RuntimeError("MODEL.COMPILE is set but DeepSpeed did not compile the model")
            self.log.info("torch.compile: on; the first steps take longer while it compiles")
        self.schedule_steps = cfg.TRAIN.SCHEDULE_STEPS or cfg.TRAIN.EPOCHS * self.steps_per_epoch
        if self.schedule_steps > cfg.TRAIN.EPOCHS * self.steps_per_epoch:
            raise ConfigError(f"TRAIN.SCHEDULE_STEPS {cfg.TRAIN.SCHEDULE_STEPS} is longer than TRAIN.EPOCHS x steps "
                              f"per epoch = {cfg.TRAIN.EPOCHS} x {self.steps_per_epoch}; raise TRAIN.EPOCHS or "
                              "leave TRAIN.SCHEDULE_STEPS at 0")
        self.total_steps = self._total_steps()
        self.warmup_steps = cfg.TRAIN.WARMUP_EPOCHS * self.steps_per_epoch
        self.requeued = False
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.DEEPSPEED.PRECISION == "bf16")
        self.stats = StepStats(self.device, self.info.world_size)
        self.preempt_vote = PreemptionVote(self.info.world_size)
        self.fused_skip = skips_on_device(innermost_optimizer(self.engine.optimizer))
        self.flops_per_clip = train_flops_per_clip(self.engine.module, *task.flop_inputs(self.engine.module,
                                                                                          self.device))
        self.peak_flops = peak_flops(self.device, cfg.DEEPSPEED.PRECISION, cfg.LOG.PEAK_TFLOPS)
        self.step = 0           # optimizer steps done
        self.epoch = 0
        self.step_in_epoch = 0
        self.loss_history: list[float] = []   # log steps' losses for the divergence check
        self.diverging: dict | None = None     # while log steps' losses are above the limit

    def _total_steps(self) -> int:
        """Where this run stops: the schedule's end, or TRAIN.MAX_STEPS before it. MAX_STEPS does
        not change the schedule (`self.schedule_steps`), so stopping and resuming equals not stopping."""
        total = self.schedule_steps
        return min(total, self.cfg.TRAIN.MAX_STEPS) if self.cfg.TRAIN.MAX_STEPS > 0 else total

    # -- the run folder ---------------------------------------------------------------------------
    def _prepare_run_folder(self) -> tuple[int, list[str]]:
        """Rank 0, before anything is written: take the lock, remove what killed saves left, refuse
        a resume with another recipe, then write config.yaml. Every rank gets the same outcome (and
        the same exception). Returns the step the run continues from and notes for the log."""
        outcome = None
        if self.info.is_main:
            try:
                outcome = self._prepare_run_folder_main()
            except Exception as err:  # the other ranks wait for the outcome: tell them, then stop too
                if self.info.world_size == 1:
                    raise
                outcome = (type(err).__name__, str(err))
                self._share(outcome)
                raise
        outcome = self._share(outcome)
        if isinstance(outcome[0], str):  # rank 0 refused: the same exception here
            kinds = {c.__name__: c for c in (RunLocked, DiskFault, ConfigChanged, RunFolderError, ConfigError)}
            raise kinds.get(outcome[0], RunFolderError)(outcome[1])
        return outcome

    def _share(self, outcome):
        """Rank 0's `outcome` on every rank (one object broadcast, at start only)."""
        if self.info.world_size == 1:
            return outcome
        box = [outcome]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def _prepare_run_folder_main(self) -> tuple[int, list[str]]:
        cfg, notes = self.cfg, []
        with writing("the run folder", self.out_dir):
            os.makedirs(self.out_dir, exist_ok=True)
        taken = self.lock.acquire()
        atexit.register(self.lock.release)  # also on errors; fit() releases it when it returns
        if taken:
            notes.append(f"{self.out_dir}: {taken}")
        removed = ckpt.remove_incomplete(self.ckpt_dir) + remove_temp_files(self.out_dir)
        if removed:
            notes.append(f"removed what interrupted writes left in {self.out_dir}: {', '.join(removed)}")
        tag = ckpt.latest_tag(self.ckpt_dir) if cfg.TRAIN.AUTO_RESUME else None
        resume_step = 0
        if tag is not None:
            facts = ckpt.checkpoint_facts(self.ckpt_dir, tag)
            check_resume_config(self.out_dir, cfg, facts.get("world_size", self.info.world_size),
                                self.info.world_size, tag)
            resume_step = facts.get("step", 0)
        save_config(cfg, os.path.join(self.out_dir, "config.yaml"))
        return resume_step, notes

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    # -- checkpoints ------------------------------------------------------------------------------
    def client_state(self) -> dict:
        from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                    UNIVERSAL_CHECKPOINT_VERSION_VALUE)
        return {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "world_size": self.info.world_size, "config": self.cfg.dump(),
                "bad_videos": self.bad_videos.state(),
                # lets deepspeed.checkpoint.ds_to_universal convert it for another world size
                UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}

    def save_checkpoint(self) -> str | None:
        """Save unless the loss is not finite or diverging since the last good point (then None)."""
        if self.stats.pending_non_finite():  # a skipped step since the last log: stop, write nothing
            self._raise_non_finite(self.step)
        suspect = self._diverging_now()
        if suspect:
            self.log.info(f"checkpoint at step {self.step} not written: {suspect}")
            return None
        path = ckpt.save(self.engine, self.ckpt_dir, self.step, self.client_state(), self.info.is_main,
                         keep=self.cfg.TRAIN.KEEP_CHECKPOINTS, world_size=self.info.world_size)
        self.log.info(f"checkpoint: {path}")
        return path

    def _prepare_resume(self, ds_config: dict) -> str | None:
        """The tag to resume from; a ZeRO checkpoint from another world size is converted to
        DeepSpeed's universal format first (rank 0 converts, the others wait)."""
        if not self.cfg.TRAIN.AUTO_RESUME:
            return None
        foreign = ckpt.needs_universal(self.ckpt_dir, self.info.world_size)
        if foreign is None:
            return ckpt.latest_tag(self.ckpt_dir)
        if self.info.is_main:
            self.log.info(f"{foreign} was saved with another world size: converting to universal format")
            ckpt.convert_to_universal(self.ckpt_dir, foreign)
        barrier()
        ds_config["checkpoint"] = {"load_universal": True}
        return f"{foreign}_universal"

    def maybe_resume(self) -> None:
        if self.resume_tag is None:
            return
        state = ckpt.resume(self.engine, self.ckpt_dir, self.resume_tag)
        if state is None:
            return
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.bad_videos.load_state(state.get("bad_videos"))
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.log.info(f"resumed from {self.resume_tag} (step {self.step}, epoch {self.epoch}"
                      f"{', saved with world size ' + str(state['world_size']) if state.get('world_size') != self.info.world_size else ''})")
        self.log.record("resume", self.step, epoch=self.epoch, from_world_size=state.get("world_size"))

    def write_model_file(self) -> str:
        """Consolidated fp32 weights next to the checkpoints (needs a fresh checkpoint for ZeRO)."""
        tag = ckpt.latest_tag(self.ckpt_dir)
        state = ckpt.fp32_state_dict(self.engine, self.ckpt_dir, tag) if self.info.is_main else None
        path = os.path.join(self.out_dir, "model.pt")
        if self.info.is_main:
            ckpt.save_model_file(state, path, {"step": self.step, "epoch": self.epoch,
                                               "config": self.cfg.dump(), "task": self.task.name})
            self.log.info(f"consolidated fp32 weights: {path}")
        barrier()
        return path

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> dict:
        self.maybe_resume()
        cfg, info = self.cfg, self.info
        self.log.info(f"{self.task.name}: {len(self.train_set)} videos, {self.steps_per_epoch} steps/epoch, "
                      f"{self.total_steps} steps, {self.total_clips} clips per step on {info.world_size} "
                      f"process(es) ({info.launcher}, {self.device.type}), lr {self.base_lr:.3g}, "
                      f"ZeRO-{cfg.DEEPSPEED.ZERO_STAGE}, {cfg.DEEPSPEED.PRECISION}")
        status = "finished"
        while self.step < self.total_steps and self.epoch < cfg.TRAIN.EPOCHS:
            status = self.train_epoch()
            if status == "preempted":
                break
            epoch_done = self.step_in_epoch >= self.steps_per_epoch
            if epoch_done:  # (a MAX_STEPS stop mid-epoch resumes inside the same epoch)
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
            done = self.step >= self.total_steps
            if ((epoch_done and self.epoch % cfg.TRAIN.CKPT_PERIOD == 0) or done) \
                    and ckpt.latest_tag(self.ckpt_dir) != ckpt.tag_for(self.step):  # not twice (CKPT_STEPS)
                self.save_checkpoint()
            if self.task.has_eval and ((epoch_done and self.epoch % cfg.TRAIN.EVAL_PERIOD == 0) or done):
                metrics = self.task.evaluate(self, "val")
                self.log.record("val", self.step, epoch=self.epoch, **metrics)
                self.log.info(f"epoch {self.epoch} val: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self.preempt_vote.close()
        if status == "preempted":
            return {"status": status, "step": self.step, "requeued": self.requeued}
        if self.diverging:
            self._raise_diverged(ended=True)
        if ckpt.latest_tag(self.ckpt_dir) != ckpt.tag_for(self.step):
            self.save_checkpoint()
        self.write_model_file()
        result = {"status": "finished", "step": self.step, "epoch": self.epoch}
        if self.task.has_eval and hasattr(self.task, "final_test"):
            result.update(self.task.final_test(self))
        self.log.close()
        return result

    def train_epoch(self) -> str:
        """Run until the epoch ends or MAX_STEPS; returns "epoch" or "preempted"."""
        self.loader.set_epoch(self.epoch, self.step_in_epoch)  # one stream over the run: workers persist
        bar = self.log.progress(self.steps_per_epoch, self.step_in_epoch, f"epoch {self.epoch + 1}/{self.cfg.TRAIN.EPOCHS}",
                                seconds=self.cfg.LOG.PROGRESS_SECONDS, run_total=self.total_steps, run_done=self.step)
        try:
            return self._run_steps(bar)
        finally:
            if bar is not None:
                bar.close()

    def _run_steps(self, bar) -> str:
        """The hot path: no host read of device values except on log steps (and for optimizers
        that cannot skip a step on the device, see `_guard_update`)."""
        cfg, info, accum = self.cfg, self.info, self.cfg.TRAIN.ACCUM_STEPS
        micro, epoch_clips, epoch_data_time = 0, 0, 0.0
        period = {"clips": 0, "data": 0.0, "start": time.perf_counter()}
        t_last = time.perf_counter()
        self.engine.train()
        for batch in self.loader:
            t_data = time.perf_counter()
            self.bad_videos.note(batch)   # host counts only; combined at log steps
            period["data"] += t_data - t_last
            epoch_data_time += t_data - t_last
            lr = self.micro_step(batch, micro)
            clips = batch["video"].shape[0]
            period["clips"] += clips
            epoch_clips += clips
            micro += 1
            t_last = time.perf_counter()
            if micro < accum:
                continue
            micro = 0
            preempt = self.end_step()
            if self.step % cfg.TRAIN.LOG_PERIOD == 0 or self.step == 1 or self.step >= self.total_steps:
                fields = self._log_step(lr, period)
                if bar is not None:
                    bar.set_postfix(refresh=False, **fields)
                period = {"clips": 0, "data": 0.0, "start": time.perf_counter()}
                t_last = period["start"]  # the log step's host read is not data wait
            if bar is not None:
                bar.update(1)
            if preempt:
                self.on_preemption()
                return "preempted"
            if cfg.TRAIN.CKPT_STEPS and self.step % cfg.TRAIN.CKPT_STEPS == 0:
                self.save_checkpoint()
            if self.step >= self.total_steps:
                break
        self.bad_videos.sync()   # the epoch's last counts from every rank (once per epoch)
        self.log.record("epoch", self.step, epoch=self.epoch + 1, clips=epoch_clips * info.world_size,
                        data_time=epoch_data_time, **self.bad_videos.end_epoch(self.epoch + 1))
        return "epoch"

    def micro_step(self, batch: dict, micro: int) -> float:
        """Forward, backward and (on the last micro-step) the update; returns the lr it used."""
        cfg, info, accum = self.cfg, self.info, self.cfg.TRAIN.ACCUM_STEPS
        lr = cosine_lr(self.step, max(self.schedule_steps, 1), self.warmup_steps, self.base_lr, self.min_lr,
                       self.warmup_lr)
        set_lr(self.engine.optimizer, lr)
        # masks validated on the first step (the task's own rule) and on the steps that log
        ctx = StepContext(self.step, micro, info.rank, info.world_size, accum, cfg.SEED,
                          validate=(self.step + 1) % cfg.TRAIN.LOG_PERIOD == 0)
        # dropout and mixup (NumPy) draw from global generators: seed them for this micro-batch's
        # first global row, so a step's randomness does not depend on the world size
        seeding.seed_global_rngs(cfg.SEED, self.step, ctx.first_row(batch["video"].shape[0]))
        with self.autocast:
            loss, _ = self.task.train_step(self.engine, batch, ctx)
        self.stats.add(loss)
        if micro + 1 == accum:
            self._guard_update()
        self.engine.backward(loss)
        self.engine.step()
        return lr

    def end_step(self) -> bool:
        """After an optimizer step; returns whether the ranks agreed to stop for a preemption."""
        self.stats.step_done()
        self.step += 1
        self.step_in_epoch += 1
        preempt = self.preempt_vote(self.preemption.requested)
        if hasattr(self.task, "after_step"):
            self.task.after_step(self)
        return preempt

    def _guard_update(self) -> None:
        """Keep a non-finite loss from reaching the weights. A fused optimizer skips the step on the
        device; any other is checked on the host here, before the update (one read per step)."""
        if self.fused_skip:
            self.stats.guard(self.engine.optimizer)
        elif self.info.world_size > 1 or bool(self.stats.found_inf):
            self.stats.guard(self.engine.optimizer)   # agree across ranks first
            if bool(self.stats.found_inf):
                self._raise_non_finite(self.step + 1)

    def _raise_non_finite(self, step: int):
        last = ckpt.latest_tag(self.ckpt_dir)
        raise NonFiniteLoss(f"loss is not finite at step {step} (epoch {self.epoch + 1}); the update was skipped, "
                            "last good checkpoint: " + (os.path.join(self.ckpt_dir, last) if last else "none yet") +
                            ". Lower TRAIN.BASE_LR, set TRAIN.CLIP_GRAD, or use bf16 instead of fp16.")

    def _log_step(self, lr: float, period: dict) -> dict:
        """The one host read of the period: mean loss over ranks, non-finite count, throughput, MFU."""
        stats = self.stats.read(self.bad_videos.counts())
        if stats["non_finite"]:
            self._raise_non_finite(self.step)
        self.bad_videos.combined(stats["extra"])   # may stop the run: too many bad videos
        elapsed = max(time.perf_counter() - period["start"], 1e-9)
        per_device = period["clips"] / elapsed
        values = {"loss": stats["loss"], "lr": lr, "clips_per_s": per_device * self.info.world_size,
                  "clips_per_s_per_device": per_device, "data_wait": period["data"] / elapsed,
                  "tflops_per_device": per_device * self.flops_per_clip / 1e12}
        if self.peak_flops:
            values["mfu"] = per_device * self.flops_per_clip / self.peak_flops
        self.log.record("train", self.step, epoch=self.epoch + 1, **values)
        self._check_divergence(stats["loss"])
        fields = {"loss": f"{stats['loss']:.4f}", "lr": f"{lr:.2e}", "clips_s": f"{values['clips_per_s']:.1f}",
                  "data": f"{values['data_wait']:.0%}"}
        if "mfu" in values:
            fields["mfu"] = f"{values['mfu']:.1%}"
        if self.bad_videos.bad:
            fields["bad_videos"] = f"{self.bad_videos.bad}/{self.bad_videos.loads}"
        return fields

    # -- divergence: host-side, from the losses the log steps read anyway ------------------------------
    def _divergence_limit(self) -> float | None:
        factor = self.cfg.TRAIN.DIVERGENCE_FACTOR
        if factor <= 0 or self.cfg.TRAIN.DIVERGENCE_PATIENCE <= 0 or len(self.loss_history) < DIVERGENCE_MIN_HISTORY:
            return None
        return factor * statistics.median(self.loss_history)

    def _check_divergence(self, loss: float) -> None:
        """A log step's loss above DIVERGENCE_FACTOR x the running median of the earlier ones is
        suspect; DIVERGENCE_PATIENCE suspect log steps in a row stop the run. Suspect losses stay
        out of the median, and no checkpoint is written while the loss is suspect."""
        limit = self._divergence_limit()
        if limit is not None and loss > limit:
            if self.diverging is None:
                self.diverging = {"since": self.step, "count": 0}
            self.diverging.update(count=self.diverging["count"] + 1, loss=loss, limit=limit)
            if self.diverging["count"] >= self.cfg.TRAIN.DIVERGENCE_PATIENCE:
                self._raise_diverged()
            return
        if self.diverging is not None:
            self.log.info(f"step {self.step}: the loss is back under the divergence limit ({loss:.4g})")
        self.diverging = None
        self.loss_history = (self.loss_history + [loss])[-DIVERGENCE_WINDOW:]

    def _diverging_now(self) -> str:
        """Before a checkpoint: why the weights may be past a divergence, or "". The steps since the
        last log step are judged too (their mean loss so far: one read, at checkpoints only)."""
        if self.diverging:
            return (f"the loss has been above {self.cfg.TRAIN.DIVERGENCE_FACTOR:g} x its running median since step "
                    f"{self.diverging['since']}")
        limit = self._divergence_limit()
        if limit is None:
            return ""
        partial = self.stats.totals[:2].clone()  # loss sum and micro-steps since the last log step
        if self.info.world_size > 1:
            torch.distributed.all_reduce(partial)
        loss_sum, micro_steps = partial.tolist()
        if micro_steps and loss_sum / micro_steps > limit:
            return (f"the loss since the last log step ({loss_sum / micro_steps:.4g}) is above "
                    f"{self.cfg.TRAIN.DIVERGENCE_FACTOR:g} x its running median")
        return ""

    def _raise_diverged(self, ended: bool = False):
        last = ckpt.latest_tag(self.ckpt_dir)
        d = self.diverging
        raise Diverged(f"loss diverged{' (the run ended with it)' if ended else ''}: {d['loss']:.4g} at step "
                       f"{self.step} is above "
                       f"{self.cfg.TRAIN.DIVERGENCE_FACTOR:g} x the running median of the log steps' losses "
                       f"({d['limit']:.4g}) for {d['count']} log step(s) in a row, since step {d['since']}; last good "
                       "checkpoint: " + (os.path.join(self.ckpt_dir, last) if last else "none yet") +
                       ". Lower TRAIN.BASE_LR or set TRAIN.CLIP_GRAD (TRAIN.DIVERGENCE_FACTOR 0 turns this check off).")

    def on_preemption(self) -> None:
        self.log.info(f"{self.preemption.signal_name or 'signal'} received: checkpointing at step {self.step}")
        self.save_checkpoint()
        # Ctrl-C is a person stopping the run, not the scheduler taking the node: no requeue
        by_hand = self.preemption.signal_name == "SIGINT"
        if by_hand:
            message = "stopped by Ctrl-C: not requeued"
        else:
            message = requeue_slurm_job() if self.info.is_main else ""
        # only rank 0 asks SLURM; the others go by whether they run in a SLURM job at all
        self.requeued = (message.startswith("requeued") if self.info.is_main
                         else "SLURM_JOB_ID" in os.environ and not by_hand)
        self.log.info(message)
        self.log.record("preempted", self.step, requeue=message)
        barrier()
        self.log.close()
