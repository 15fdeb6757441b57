"""Config, launch detection, lr schedule and parameter groups: the engine's pure parts."""
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

from videomae.engine.config import ConfigError, load_config
from videomae.engine.distributed import detect, expand_hostlist
from videomae.engine.optim import cosine_lr, layer_id, param_groups
from videomae.models import build_classifier, build_pretrain_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True)),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.MODEL.NAME


def test_overrides_and_errors_name_the_key(tmp_path):
    cfg = load_config(None, ["TRAIN.BATCH_SIZE", "16", "MASK.TYPE", "random", "TRAIN.BASE_LR", "0"])
    assert cfg.TRAIN.BATCH_SIZE == 16 and cfg.MASK.TYPE == "random"
    assert cfg.TRAIN.BASE_LR == 0.0 and isinstance(cfg.TRAIN.BASE_LR, float)   # an int for a float key is fine
    with pytest.raises(ConfigError, match="unknown config key TRAIN.BATCHSIZE; did you mean TRAIN.BATCH_SIZE"):
        load_config(None, ["TRAIN.BATCHSIZE", "3"])
    with pytest.raises(ConfigError, match="TRAIN.BATCH_SIZE"):
        load_config(None, ["TRAIN.BATCH_SIZE", "many"])
    with pytest.raises(ConfigError, match="DEEPSPEED.ZERO_STAGE = 4"):
        load_config(None, ["DEEPSPEED.ZERO_STAGE", "4"])
    with pytest.raises(ConfigError, match="TRAIN.EMA = 0.999 applies to TASK finetune / linprobe, not pretrain"):
        load_config(None, ["TASK", "pretrain", "TRAIN.EMA", "0.999"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["TRAIN.EPOCHS"])
    with pytest.raises(ConfigError, match="MASK.TYPE = 'tubes' is not a registered masking strategy .*did you mean 'tube'"):
        load_config(None, ["MASK.TYPE", "tubes"])
    with pytest.raises(ConfigError, match="needs IMPORTS to load the module that registers it"):
        load_config(None, ["MASK.TYPE", "checkerboard"])
    with pytest.raises(ConfigError, match="IMPORTS: file not found: nowhere/masks.py"):
        load_config(None, ["IMPORTS", "nowhere/masks.py"])
    with pytest.raises(ConfigError, match="IMPORTS: no module named 'no_such_module_here'"):
        load_config(None, ["IMPORTS", "no_such_module_here"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("MASK:\n  RATIOO: 0.5\n")
    with pytest.raises(ConfigError, match=f"{bad}: unknown config key MASK.RATIOO; did you mean MASK.RATIO"):
        load_config(bad)


def test_stored_config_or_a_clear_error(tmp_path):
    import torch

    from videomae.engine.config import checkpoint_config

    cfg = load_config(None, ["TRAIN.BATCH_SIZE", "7", "MODEL.PRETRAINED", "x.pt"])
    torch.save({"model": {"w": torch.zeros(1)}, "config": cfg.dump()}, tmp_path / "ours.pt")
    stored = checkpoint_config(str(tmp_path / "ours.pt"), overrides=["TRAIN.EPOCHS", "3"])
    assert (stored.TRAIN.BATCH_SIZE, stored.TRAIN.EPOCHS, stored.MODEL.PRETRAINED) == (7, 3, "")
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "foreign.pth")
    with pytest.raises(ConfigError, match="foreign.pth carries no config: give the one it was trained with"):
        checkpoint_config(str(tmp_path / "foreign.pth"))
    with pytest.raises(ConfigError, match="holds no config.yaml"):
        checkpoint_config(str(tmp_path))


def test_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("TRAIN:\n  EPOCHS: 10\n  BATCH_SIZE: 4\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nTRAIN:\n  EPOCHS: 20\n")
    cfg = load_config(tmp_path / "child.yaml", ["TRAIN.BATCH_SIZE", "6"])
    assert (cfg.TRAIN.EPOCHS, cfg.TRAIN.BATCH_SIZE) == (20, 6)


def test_published_recipes_in_configs():
    b = load_config(ROOT / "configs/pretrain/ssv2_vit_b.yaml")
    assert b.MODEL.NAME == "pretrain_videomae_base_patch16_224"
    assert (b.MASK.TYPE, b.MASK.RATIO, b.MODEL.DECODER_DEPTH) == ("tube", 0.9, 4)
    assert (b.TRAIN.BASE_LR, b.TRAIN.WEIGHT_DECAY, tuple(b.TRAIN.BETAS), b.TRAIN.WARMUP_EPOCHS) == \
        (1.5e-4, 0.05, (0.9, 0.95), 40)
    assert b.DATA.SAMPLING_RATE == 2 and not b.DATA.FLIP
    k = load_config(ROOT / "configs/pretrain/k400_vit_h.yaml")
    assert k.DATA.SAMPLING_RATE == 4 and k.MODEL.NAME == "pretrain_videomae_huge_patch16_224"


@pytest.mark.parametrize("text, hosts", [
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("node1", ["node1"]),
    ("a[1-2],b[08-10]", ["a1", "a2", "b08", "b09", "b10"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("x1,y2", ["x1", "y2"]),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


def test_detect_launchers():
    torchrun = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.launcher) == (3, 8, 1, "torchrun")
    slurm_env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
                 "SLURM_JOB_NODELIST": "gpu[01-04,07]", "SLURM_JOB_ID": "123456"}
    slurm = detect(slurm_env)
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.launcher) == (5, 16, 1, "slurm")
    assert slurm.master_addr == "gpu01" and slurm.master_port == 20000 + 123456 % 20000
    assert detect({**slurm_env, "SLURM_JOB_ID": "123456"}).master_port == slurm.master_port  # every task agrees
    # the batch script itself (no srun step) is one process, not rank 5 of 16
    batch_shell = {k: v for k, v in slurm_env.items() if k != "SLURM_STEP_ID"}
    assert detect(batch_shell).launcher == "single" and detect(batch_shell).world_size == 1
    assert detect({}).world_size == 1


def test_process_group_is_gone_before_interpreter_teardown():
    """A rank that exits with its gloo group alive can abort (exit 134) after its work is done;
    the group must be destroyed by an exit handler while Python is still whole."""
    # registered before init_distributed, so it runs after the library's own exit handler
    script = ("import atexit, torch\n"
              "atexit.register(lambda: print('alive at exit:', torch.distributed.is_initialized()))\n"
              "from videomae.engine.distributed import init_distributed\n"
              "init_distributed()\n"
              "print('alive in run:', torch.distributed.is_initialized())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MASTER_PORT": free_port()})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "alive in run: True" in result.stdout and "alive at exit: False" in result.stdout, result.stdout


def test_cosine_schedule():
    lr = [cosine_lr(s, 100, 10, 1.0, 0.01) for s in range(101)]
    assert lr[0] == 0.0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr[100] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_weight_decay_exclusions():
    model = build_pretrain_model("tiny", img_size=32, patch_size=8, num_frames=4, depth=2, pos_embed="separable")
    groups = param_groups(model, 0.05)
    names = {g["weight_decay"]: set(g["names"]) for g in groups}
    assert "encoder.blocks.0.attn.qkv.weight" in names[0.05] and "decoder.head.weight" in names[0.05]
    for excluded in ("encoder.blocks.0.attn.q_bias", "encoder.blocks.0.norm1.weight", "mask_token",
                     "encoder.pos_embed.pos_embed_spatial", "decoder.head.bias", "encoder.norm.bias"):
        assert excluded in names[0.0], excluded


def test_layer_decay_scales():
    model = build_classifier("tiny", num_classes=3, img_size=32, patch_size=8, num_frames=4, depth=4)
    groups = param_groups(model, 0.05, layer_decay=0.75, num_layers=4)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.75 ** 5)
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** 4)
    assert scale["blocks.3.mlp.fc2.weight"] == pytest.approx(0.75 ** 1)
    assert scale["head.weight"] == scale["fc_norm.weight"] == 1.0
    assert layer_id("encoder.blocks.2.attn.qkv.weight", 4) == 3
