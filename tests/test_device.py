"""The same code on CPU and GPU: host copies for pictures and metrics, the EMA on the model's device,
bf16 numerics, the tiny demo end to end, and logs that suit a file (no carriage returns, no
start-up noise). With a GPU (`make test-gpu`) the `device` fixture and the tools run on it."""
import json
import time

import pytest
import torch

from helpers import TINY, run_tool, run_train
from videomae.engine.host import to_numpy
from videomae.engine.logs import read_metrics
from videomae.masking import build_masking
from videomae.models import build_pretrain_model


def test_to_numpy_takes_any_device_and_dtype(device):
    x = torch.linspace(-1, 1, 12, device=device).reshape(3, 4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        array = to_numpy(x.to(dtype))
        assert array.dtype.name == "float32" and array.shape == (3, 4)
        assert abs(float(array[2, 3]) - 1.0) < 1e-2
    assert to_numpy((x > 0)).dtype.name == "bool"
    assert to_numpy(torch.arange(3, device=device), dtype="uint8").tolist() == [0, 1, 2]


def test_ema_follows_the_model_to_its_device():
    """The EMA copy is made before the engine moves the model; the first update moves it along.
    'meta' stands in for an accelerator so the check runs on a CPU-only machine too."""
    from types import SimpleNamespace

    from videomae.engine.classification import ClassificationTask
    from videomae.engine.config import load_config

    cfg = load_config("configs/demo/finetune.yaml", [*TINY, "MODEL.PRETRAINED", "", "DATA.NUM_CLASSES", "8",
                                                     "TRAIN.EMA", "0.9"])
    task = ClassificationTask(cfg)
    task.log = lambda line: None
    model = task.build_model()
    model.to("meta")
    task.after_step(SimpleNamespace(engine=SimpleNamespace(module=model), step=1))
    assert {p.device.type for p in task.ema.module.parameters()} == {"meta"}


def test_bf16_loss_is_close_to_fp32(device, tiny_kwargs):
    torch.manual_seed(0)
    model = build_pretrain_model(size="tiny", decoder_depth=1, **tiny_kwargs).to(device)
    video = torch.randn(4, 3, 4, 32, 32, device=device)
    mask = build_masking("tube", 0.75)(4, model.grid_size, device=device,
                                       generator=torch.Generator(device).manual_seed(0))
    fp32 = model(video, mask).loss.detach()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = model(video, mask).loss.detach()
    assert abs(float(bf16) - float(fp32)) <= 1e-2 * abs(float(fp32))


@pytest.mark.slow
def test_a_short_bf16_run_lowers_the_loss(tmp_path, synthetic_root):
    run_train(tmp_path / "run", synthetic_root, "TRAIN.MAX_STEPS", 24, "DEEPSPEED.PRECISION", "bf16",
              "TRAIN.WARMUP_EPOCHS", 0)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if r["type"] == "train"]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses


def test_progress_in_a_pipe_is_plain_lines_and_no_noise(tmp_path, synthetic_root):
    """Output to a pipe, as in a SLURM .out file: no carriage returns, one progress line per
    LOG.PROGRESS_SECONDS (plus the run's last), and none of DeepSpeed's start-up notes."""
    seconds = 2.0
    start = time.monotonic()
    result = run_train(tmp_path / "run", synthetic_root, "TRAIN.MAX_STEPS", 50, "LOG.PROGRESS", True,
                       "LOG.PROGRESS_SECONDS", seconds)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert "\r" not in output
    progress = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert 1 <= len(progress) <= elapsed / seconds + 2, progress
    assert "step" in progress[-1] and "(run 50/50)" in progress[-1] and "ETA" in progress[-1]
    assert "clips_s" in progress[-1] and "data" in progress[-1]
    for noise in ("CUDA_HOME", "built successfully", "Setting accelerator", "async_io"):
        assert noise not in output, noise


def test_tiny_demo_end_to_end(tmp_path):
    """`make demo` at tiny size: pretrain, fine-tune and scratch runs, the loss curve, the
    reconstruction picture (host copies of device tensors) and the summary."""
    out = tmp_path / "demo"
    run_tool("tools/demo.py", "--quick", "--out", out, "--data", tmp_path / "data", "--seeds", "0,1",
             *TINY, "TRAIN.MAX_STEPS", 2, "DATA.TEST_NUM_CLIPS", 1, "DATA.TEST_NUM_CROPS", 1, timeout=900)
    for name in ("summary.md", "loss_curve.png", "reconstruction.png", "finetune_seeds.png", "finetune/seed0/model.pt",
                 "finetune/seed1/model.pt", "scratch/seed0/model.pt", "scratch/seed1/model.pt", "scratch/seed1/train.log"):
        assert (out / name).exists(), name
    summary = (out / "summary.md").read_text()
    assert "| pretrained | " in summary and "| scratch | " in summary and "Paired difference" in summary
    # the two seeds' runs differ (the seed reaches the fine-tuning runs)
    first_losses = [read_metrics(out / f"scratch/seed{seed}/metrics.jsonl", "train")[0]["loss"] for seed in (0, 1)]
    assert first_losses[0] != first_losses[1]



@pytest.mark.slow
def test_demo_stops_with_a_failed_fine_tuning_runs_reason_and_exit_code(tmp_path):
    """A fine-tuning run that fails (labels beyond DATA.NUM_CLASSES; the pretraining does not read
    labels) stops the demo with one line naming the run, its reason and its log, and its exit code."""
    result = run_tool("tools/demo.py", "--quick", "--out", tmp_path / "demo", "--data", tmp_path / "data", "--seeds", "0",
                      *TINY, "TRAIN.MAX_STEPS", 1, "DATA.NUM_CLASSES", 3, check=False, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the ") and "seed 0 run failed (exit 1): " in line and "label 3 is not a known class" in line
    assert "train.log" in line and "Traceback" not in result.stderr
