"""tools/train.py end to end: resume, world-size change under ZeRO-2, outputs, bad loss."""
import json

import pytest
import torch

from helpers import final_json, losses, run_train


@pytest.mark.parametrize("stage,precision", [(1, "fp32"), (0, "bf16")])
def test_resume_gives_the_same_losses(tmp_path, synthetic_root, stage, precision):
    """DeepSpeed's engine (ZeRO-1) and the plain one (ZeRO-0), in fp32 and bf16 autocast."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["DEEPSPEED.ZERO_STAGE", stage, "DEEPSPEED.PRECISION", precision]
    run_train(straight, synthetic_root, *common, "TRAIN.MAX_STEPS", 6)
    run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 3)
    second = run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 6)
    assert "resumed from step_00000003" in second.stdout + second.stderr
    a, b = losses(straight), losses(resumed)
    assert len(a) == len(b) == 6
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_zero2_two_ranks_then_resume_on_one(tmp_path, synthetic_root):
    """ZeRO-2 with 2 gloo ranks, then the same run continued by a single process: the global batch
    is the same (2 x 2 videos, or 2 videos x 2 accumulation steps), so are the losses."""
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    common = ["TRAIN.BATCH_SIZE", 2, "DEEPSPEED.ZERO_STAGE", 2]
    run_train(reference, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "TRAIN.MAX_STEPS", 4)
    two = run_train(moved, synthetic_root, *common, "TRAIN.MAX_STEPS", 2, nproc=2)
    assert "on 2 process(es) (torchrun" in two.stdout + two.stderr
    shards = sorted(p.name for p in (moved / "checkpoints" / "step_00000002").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # optimizer state partitioned over the two ranks
    one = run_train(moved, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "TRAIN.MAX_STEPS", 4)
    assert "converting to universal format" in one.stdout + one.stderr
    torch.testing.assert_close(torch.tensor(losses(moved)), torch.tensor(losses(reference)), rtol=1e-5, atol=1e-6)


def test_zero0_two_ranks_equal_one_rank_with_accumulation(tmp_path, synthetic_root):
    """The plain stage-0 engine: DDP on 2 gloo ranks gives the losses of 1 process with 2
    accumulation steps, and that run continues on 1 process from the 2-rank checkpoint."""
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    common = ["TRAIN.BATCH_SIZE", 2, "DEEPSPEED.ZERO_STAGE", 0]
    run_train(reference, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "TRAIN.MAX_STEPS", 4)
    two = run_train(moved, synthetic_root, *common, "TRAIN.MAX_STEPS", 2, nproc=2)
    assert "on 2 process(es) (torchrun" in two.stdout + two.stderr
    run_train(moved, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "TRAIN.MAX_STEPS", 4)
    torch.testing.assert_close(torch.tensor(losses(moved)), torch.tensor(losses(reference)), rtol=1e-5, atol=1e-6)


def test_run_outputs(tmp_path, synthetic_root):
    out = tmp_path / "run"
    result = run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 2, "DEEPSPEED.ZERO_STAGE", 1)
    assert final_json(result.stdout)["status"] == "finished"
    weights = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    keys = set(weights["model"])
    assert {"encoder.patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "encoder.blocks.0.attn.q_bias",
            "encoder_to_decoder.weight", "mask_token", "decoder.head.weight"} <= keys
    assert weights["step"] == 2 and weights["task"] == "pretrain"
    assert "MODEL:" in (out / "config.yaml").read_text()
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r["type"] == "train"] == [1, 2]
    assert all({"loss", "lr", "clips_per_s", "data_wait", "tflops_per_device"} <= set(r) for r in rows if r["type"] == "train")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    marker = (out / "checkpoints" / "LATEST").read_text()
    assert marker == "step_00000002" and (out / "checkpoints" / marker / "COMPLETE").exists()


@pytest.mark.slow
def test_incomplete_checkpoint_is_ignored(tmp_path, synthetic_root):
    out = tmp_path / "run"
    run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 2, "TRAIN.CKPT_STEPS", 1)
    # a job killed while writing step 3: the folder exists, COMPLETE does not, LATEST was not moved
    (out / "checkpoints" / "step_00000003").mkdir()
    (out / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    result = run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 3)
    assert "resumed from step_00000002" in result.stdout + result.stderr


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path, synthetic_root):
    out = tmp_path / "run"
    result = run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 8, "TRAIN.CKPT_STEPS", 1, "TRAIN.BASE_LR", 1e12,
                       "TRAIN.WARMUP_EPOCHS", 0, check=False)
    assert result.returncode != 0
    message = result.stderr
    assert "loss is not finite at step" in message and "last good checkpoint" in message
    named = message.split("last good checkpoint: ")[1].split(". ")[0]
    assert "step_0000000" in named
    # the skipped update never reached the weights: the named checkpoint holds finite ones
    from videomae.convert.zero import read_deepspeed_folder

    states = read_deepspeed_folder(named)
    assert all(torch.isfinite(v).all() for v in states.values() if v.is_floating_point())


def test_config_errors_exit_cleanly(tmp_path, synthetic_root):
    result = run_train(tmp_path / "x", synthetic_root, "TRAIN.BATCHSIZE", 3, check=False)
    assert result.returncode == 2 and "did you mean TRAIN.BATCH_SIZE" in result.stderr


USER_STRATEGY = """
import os
import torch
from videomae.masking import MaskingStrategy, register_masking

@register_masking("all_but_first_slice")
class AllButFirstSlice(MaskingStrategy):
    def make(self, batch_size, grid, device, generator):
        t, h, w = grid
        with open(os.environ["STRATEGY_CALLS"], "a") as log:
            log.write(f"{batch_size}\\n")
        mask = torch.ones(batch_size, t * h * w, dtype=torch.bool, device=device)
        mask[:, : h * w] = False
        return mask
"""


def test_a_strategy_of_your_own_trains_through_imports(tmp_path, synthetic_root, monkeypatch):
    (tmp_path / "my_masks.py").write_text(USER_STRATEGY)
    monkeypatch.setenv("STRATEGY_CALLS", str(tmp_path / "calls.txt"))
    result = run_train(tmp_path / "run", synthetic_root, "TRAIN.MAX_STEPS", 2, "IMPORTS", tmp_path / "my_masks.py",
                       "MASK.TYPE", "all_but_first_slice")
    assert "masking: all_but_first_slice 0.9 -> 16 of 32 cubes masked per clip (grid 2x4x4)" in result.stdout
    # after one mask drawn to describe it and one to count FLOPs, a make()-only strategy is called
    # once per row of the rank's own batch (its generator keyed by (SEED, step, row)): 4 rows x 2 steps
    assert (tmp_path / "calls.txt").read_text().split() == ["1"] * (2 + 4 * 2)
    assert losses(tmp_path / "run")[0] > 0


def test_pretraining_starts_from_pretrained_weights(tmp_path, synthetic_root):
    first = tmp_path / "first"
    run_train(first, synthetic_root, "TRAIN.MAX_STEPS", 2)
    # at lr 0 the weights cannot move: what the second run writes is exactly what it loaded
    result = run_train(tmp_path / "second", synthetic_root, "TRAIN.MAX_STEPS", 1, "MODEL.PRETRAINED",
                       first / "model.pt", "TRAIN.BASE_LR", 0, "TRAIN.MIN_LR", 0, "TRAIN.WARMUP_LR", 0)
    assert "model.pt (videomae): loaded" in result.stdout
    loaded = torch.load(first / "model.pt", weights_only=True)["model"]
    written = torch.load(tmp_path / "second" / "model.pt", weights_only=True)["model"]
    assert set(written) == set(loaded) and all(torch.equal(written[k], loaded[k]) for k in loaded)
    refused = run_train(tmp_path / "third", synthetic_root, "TRAIN.MAX_STEPS", 1, "MODEL.PRETRAINED",
                        tmp_path / "missing.pt", check=False)
    assert refused.returncode == 1 and "checkpoint not found" in refused.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2])
def test_zero_shards_optimizer_state(stage):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("zero_memory", Path(__file__).parents[1] / "benchmarks/zero_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class Args:
        size, frames, img_size = "tiny", 4, 32

    zero0 = bench.run_stage(0, Args)
    sharded = bench.run_stage(stage, Args)
    for rank in (0, 1):
        ratio = sharded[rank]["adam_moments"] / zero0[rank]["adam_moments"]
        assert 0.45 < ratio < 0.55, ratio   # each of 2 ranks holds about half


def test_deepspeed_launcher(tmp_path, synthetic_root):
    import subprocess
    import sys

    from helpers import ROOT, env, free_port, train_args

    # the module, not the `deepspeed` script: an environment may have the package without the script on PATH
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", free_port(),
           *train_args(tmp_path / "run", synthetic_root, "TRAIN.MAX_STEPS", 1)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=env(nproc=2))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "on 2 process(es) (torchrun" in result.stdout + result.stderr


@pytest.mark.slow
def test_compiled_model_trains_like_eager(tmp_path, synthetic_root):
    """MODEL.COMPILE wraps the DeepSpeed engine's module in torch.compile; same losses as eager."""
    run_train(tmp_path / "eager", synthetic_root, "TRAIN.MAX_STEPS", 2)
    compiled = run_train(tmp_path / "compiled", synthetic_root, "TRAIN.MAX_STEPS", 2, "MODEL.COMPILE", True)
    assert "torch.compile: on" in compiled.stdout + compiled.stderr
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "compiled")), torch.tensor(losses(tmp_path / "eager")),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_demo_config_makes_its_data_on_first_use(tmp_path):
    """configs/demo/pretrain.yaml run before `make demo`: the synthetic set appears where the
    config points, then training runs on it."""
    fresh = tmp_path / "synthetic"
    run_train(tmp_path / "run", fresh, "TRAIN.MAX_STEPS", 1)
    assert len((fresh / "train.csv").read_text().splitlines()) == 192
    assert [r["step"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl")) if r["type"] == "train"] == [1]


def test_missing_list_is_one_clear_error(tmp_path, synthetic_root):
    result = run_train(tmp_path / "run", synthetic_root, "DATA.LIST_DIR", tmp_path / "lists", check=False)
    assert result.returncode == 1
    assert "annotation list not found" in result.stderr and "Traceback" not in result.stderr
