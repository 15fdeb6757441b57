"""The lean training step: device-side bookkeeping, skipped non-finite updates, the preemption vote
one step late across ranks, MFU figures, fp16 loss scaling."""
import json
import math
import os

import pytest
import torch

from helpers import free_port
from videomae.engine.flops import peak_flops, train_flops_per_clip
from videomae.engine.optim import build_optimizer
from videomae.engine.step_stats import PreemptionVote, StepStats


def test_a_non_finite_loss_leaves_the_weights_and_is_reported_at_the_next_read():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = build_optimizer("adamw", [{"params": model.parameters(), "weight_decay": 0.05}], 1e-2,
                                (0.9, 0.999), 1e-8, torch.device("cpu"))
    assert optimizer.defaults.get("fused"), "the fused kernel is what skips on the device"
    stats = StepStats(torch.device("cpu"), world_size=1)
    x = torch.randn(8, 4)

    def step(scale: float):
        loss = model(x).pow(2).mean() * scale
        stats.add(loss)
        stats.guard(optimizer)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats.step_done()
        return loss.detach()

    good = step(1.0)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    step(float("nan"))
    for p, b, m in zip(model.parameters(), before, moments):
        assert torch.equal(p, b)                                  # weights untouched
        assert torch.equal(optimizer.state[p]["exp_avg"], m)      # and so are Adam's moments
    third = step(1.0)
    assert not torch.equal(next(model.parameters()), before[0])   # the next finite step updates again
    report = stats.read()
    assert report["non_finite"] == 1
    assert math.isclose(report["loss"], (float(good) + float(third)) / 2, rel_tol=1e-6)
    after = stats.read()                                          # the totals restart after a read
    assert after["non_finite"] == 0 and math.isnan(after["loss"])


def _vote_worker(rank: int, port: str, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    vote = PreemptionVote(2)
    agreed = [vote(rank == 1 and step >= 3) for step in range(6)]   # rank 1 is signalled before step 3
    vote.close()
    results[rank] = agreed
    dist.destroy_process_group()


def test_ranks_agree_on_a_preemption_within_one_step():
    manager = torch.multiprocessing.Manager()
    results = manager.dict()
    torch.multiprocessing.spawn(_vote_worker, args=(free_port(), results), nprocs=2, join=True)
    expected = [False, False, False, False, True, True]   # seen on every rank, one step after the signal
    assert results[0] == expected and results[1] == expected


def test_flops_per_clip_counts_attention(tiny_kwargs):
    from videomae.models import build_classifier

    model = build_classifier("tiny", num_classes=5, **tiny_kwargs)
    video = torch.zeros(2, 3, 4, 32, 32)
    flops = train_flops_per_clip(model, (video,))
    n, d, depth = 32, model.embed_dim, tiny_kwargs["depth"]
    # by hand: qkv + proj + MLP (ratio 4) matmuls, attention's two batched matmuls, the cube embedding
    per_block = 2 * n * d * (3 * d) + 2 * n * d * d + 2 * 2 * n * d * (4 * d) + 2 * 2 * n * n * d
    embed = 2 * n * (3 * 2 * 8 * 8) * d
    head = 2 * d * 5
    assert flops == pytest.approx(3 * (depth * per_block + embed + head), rel=1e-6)


def test_peak_table_and_override():
    assert peak_flops(torch.device("cpu"), "bf16") is None
    assert peak_flops(torch.device("cpu"), "bf16", override_tflops=100.0) == 100e12


def test_fp16_loss_scale_halves_on_overflow_and_grows_after_a_clean_window(monkeypatch):
    """fp16 runs on GPUs only; the scaling rule they use is checked here on CPU."""
    from deepspeed.runtime.fp16 import loss_scaler
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    monkeypatch.setattr(loss_scaler.dist, "get_rank", lambda *args, **kwargs: 0)  # it only names rank 0 in logs

    from videomae.engine.trainer import FP16_LOSS_SCALE as cfg

    scaler = DynamicLossScaler(init_scale=2.0 ** cfg["initial_scale_power"], scale_window=cfg["loss_scale_window"],
                               min_scale=cfg["min_loss_scale"], delayed_shift=cfg["hysteresis"],
                               consecutive_hysteresis=False)
    assert scaler.cur_scale == 65536.0
    scaler.update_scale(True)                 # hysteresis 2: the first overflow is tolerated
    scaler.update_scale(True)
    assert scaler.cur_scale == 32768.0
    for _ in range(cfg["loss_scale_window"] - 1):
        scaler.update_scale(False)
    assert scaler.cur_scale == 32768.0        # not before a whole clean window
    for _ in range(2):
        scaler.update_scale(False)
    assert scaler.cur_scale == 65536.0


def test_preemption_outside_slurm_checkpoints_and_exits_75(tmp_path, synthetic_root):
    """SIGUSR1 (what SLURM sends before a time limit) outside SLURM: the step finishes, a complete
    checkpoint is written, the exit code is 75 with the command that resumes, and that resumes."""
    import signal
    import subprocess
    import time as clock

    from helpers import PYTHON, ROOT, env, train_args

    out = tmp_path / "run"
    environment = {k: v for k, v in env().items() if not k.startswith("SLURM_")}
    proc = subprocess.Popen([PYTHON, *map(str, train_args(out, synthetic_root, "TRAIN.MAX_STEPS", 10**6))], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    deadline = clock.monotonic() + 300
    metrics = out / "metrics.jsonl"
    while clock.monotonic() < deadline and not (metrics.exists() and '"train"' in metrics.read_text()):
        clock.sleep(0.5)   # training has started
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    assert "resume with the same command" in stderr and "Traceback" not in stderr
    preempted = [json.loads(line) for line in open(out / "metrics.jsonl") if '"preempted"' in line]
    step = preempted[-1]["step"]
    assert (out / "checkpoints" / f"step_{step:08d}" / "COMPLETE").exists()
