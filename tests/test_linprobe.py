"""Linear probing: the frozen encoder runs in eval mode without gradient, fine-tuning
augmentation is off, and the shipped probe recipes load."""
import glob
import os

import pytest
import torch

from helpers import ROOT
from videomae.engine.config import load_config

# a fine-tuning config with its augmentation and drop path on, probed on a tiny model
TINY_PROBE = ["MODEL.NAME", "videomae_vit_tiny_patch16_224", "MODEL.PRETRAINED", "", "MODEL.NUM_FRAMES", "4",
              "MODEL.IMG_SIZE", "32", "MODEL.PATCH_SIZE", "8", "MODEL.DEPTH", "2", "MODEL.DROP_PATH", "0.5",
              "DATA.NUM_CLASSES", "8", "DATA.NUM_REPEATS", "1", "DEEPSPEED.PRECISION", "fp32"]


def probe_config(synthetic_root, task="linprobe"):
    return load_config(ROOT / "configs/finetune/ssv2_vit_s.yaml",
                       ["TASK", task, "DATA.ROOT", str(synthetic_root), "DATA.LIST_DIR", str(synthetic_root),
                        *TINY_PROBE])


def test_frozen_encoder_in_eval_mode_gets_no_gradient(synthetic_root):
    from videomae.engine.classification import PROBE_MODULES, LinearProbeTask
    from videomae.engine.plain import PlainEngine
    from videomae.engine.tasks import StepContext

    cfg = probe_config(synthetic_root)
    task = LinearProbeTask(cfg)
    notes = []
    task.log = notes.append
    model = task.build_model()
    assert task.mixup is None
    assert any("DATA.RAND_AUGMENT" in n and "MODEL.DROP_PATH 0.5" in n for n in notes)
    trained = [p for p in model.parameters() if p.requires_grad]
    engine = PlainEngine(model, torch.optim.AdamW(trained, lr=1e-3), torch.device("cpu"), 1, 0.0, 1, 0)
    modes = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
    batch = {"video": torch.randint(0, 256, (3, 3, 4, 32, 32), dtype=torch.uint8), "label": torch.tensor([0, 3, 5])}
    losses = []
    for step in range(2):
        model.train()          # what the trainer does at the start of every epoch and after validation
        engine.optimizer.zero_grad(set_to_none=True)
        loss, _ = task.train_step(engine, batch, StepContext(step, 0, 0, 1, 1, cfg.SEED))
        loss.backward()
        losses.append(float(loss.detach()))
        for name, p in model.named_parameters():
            probe = name.split(".")[0] in PROBE_MODULES
            assert (p.grad is not None) == probe, name
        assert model.head.weight.grad.abs().sum() > 0
    assert modes and not any(modes)                      # every block forward ran in eval mode
    assert model.head.training and model.fc_norm.training
    assert losses[0] == losses[1]                         # no drop path draw: the same batch, the same loss


def test_probe_training_data_has_no_fine_tuning_augmentation(synthetic_root):
    from videomae.engine.data import build_dataset

    probe = repr(build_dataset(probe_config(synthetic_root), "train").transform)
    finetune = repr(build_dataset(probe_config(synthetic_root, "finetune"), "train").transform)
    assert "RandAugment" in finetune and "RandomErasing" in finetune     # the config asks for both
    assert "RandAugment" not in probe and "RandomErasing" not in probe
    assert "RandomResizedCrop" in probe


LINPROBE_CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "linprobe" / "[!_]*.yaml")))


def test_there_are_probe_recipes_for_both_datasets_and_sizes():
    names = {os.path.basename(p) for p in LINPROBE_CONFIGS}
    assert {"ssv2_vit_s.yaml", "ssv2_vit_b.yaml", "k400_vit_s.yaml", "k400_vit_b.yaml"} <= names


@pytest.mark.parametrize("path", LINPROBE_CONFIGS, ids=os.path.basename)
def test_every_linprobe_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.TASK == "linprobe" and cfg.MODEL.NAME.startswith("videomae_vit_")
    size = {"s": "small", "b": "base"}[os.path.basename(path).split("_")[-1][0]]
    assert f"_{size}_" in cfg.MODEL.NAME and cfg.MODEL.PRETRAINED.endswith(f"_vit_{size[0]}/model.pt")
    assert (cfg.TRAIN.MIXUP, cfg.TRAIN.CUTMIX, cfg.DATA.RAND_AUGMENT, cfg.DATA.RANDOM_ERASING) == (0, 0, "", 0)
    assert (cfg.MODEL.DROP_PATH, cfg.TRAIN.LABEL_SMOOTHING, cfg.DATA.NUM_REPEATS) == (0, 0, 1)
    assert cfg.DATA.FLIP == (cfg.DATA.DATASET == "kinetics")   # SSv2 labels say left/right
