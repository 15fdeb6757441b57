"""Every shipped config loads, builds its model and its data pipeline: a wrong model name, an
unknown key or a pipeline that cannot take the config's geometry fails here, not after a cluster
job has loaded its data. Models are built on the meta device (ViT-H allocates nothing); the data
comes from the small synthetic set, through lists in a folder of their own (the shipped configs
name 400 or 174 classes; the synthetic set's classes.json names 8)."""
import shutil
from pathlib import Path

import pytest
import torch

from helpers import ROOT, load_tool

from videomae.engine.config import load_config
from videomae.engine.data import build_dataset


train = load_tool("tools/train.py")


def standalone_configs() -> list[Path]:
    """Every YAML under configs/ except the `_`-prefixed include files, which only others inherit."""
    return sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("_"))


def test_include_files_are_all_inherited():
    """An `_`-prefixed file is skipped above only because some standalone config names it."""
    named = {(p.parent / line.split(":", 1)[1].strip()).resolve()
             for p in (ROOT / "configs").rglob("*.yaml") for line in p.read_text().splitlines()
             if line.startswith("_BASE_:")}
    includes = {p.resolve() for p in (ROOT / "configs").rglob("_*.yaml")}
    assert includes and includes <= named, sorted(map(str, includes - named))


@pytest.fixture(scope="module")
def lists(synthetic_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lists")
    for name in ("train.csv", "val.csv", "test.csv"):
        shutil.copy(synthetic_root / name, folder / name)
    return folder


SPLITS = {"pretrain": ("pretrain", "val"), "finetune": ("train", "val", "test"),
          "linprobe": ("train", "val", "test")}


@pytest.mark.parametrize("path", standalone_configs(), ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_builds(path, synthetic_root, lists):
    cfg = load_config(path, ["DATA.ROOT", str(synthetic_root), "DATA.LIST_DIR", str(lists),
                             "DATA.NUM_WORKERS", "0", "MODEL.PRETRAINED", ""])
    task = train.build_task(cfg)
    task.log = lambda *_: None
    with torch.device("meta"):
        model = task.build_model()
    assert next(model.parameters()).is_meta
    assert (task.name == "pretrain") == hasattr(model, "decoder")
    for split in SPLITS[cfg.TASK]:
        dataset = build_dataset(cfg, split)
        item = dataset[0]
        video = item["video"]
        m = cfg.MODEL
        assert tuple(video.shape[-4:]) == (3, m.NUM_FRAMES, m.IMG_SIZE, m.IMG_SIZE), (split, video.shape)


def test_print_config_is_the_resolved_config(tmp_path, capsys):
    """--print-config: includes and overrides applied, validated, printed as YAML that loads back to
    the same config; nothing runs (no OUTPUT_DIR is made)."""
    import yaml

    from videomae.engine.config import ConfigError

    out = tmp_path / "never_made"
    assert train.main(["--config", str(ROOT / "configs/pretrain/k400_vit_s.yaml"), "--print-config", "TRAIN.ACCUM_STEPS", "4",
                 "OUTPUT_DIR", str(out)]) == 0
    printed_text = capsys.readouterr().out
    printed = yaml.safe_load(printed_text)
    assert printed["MODEL"]["NAME"] == "pretrain_videomae_small_patch16_224"     # the file itself
    assert printed["DATA"]["LIST_DIR"] == "/data/k400/lists"                      # its _BASE_
    assert printed["TRAIN"]["ACCUM_STEPS"] == 4 and printed["OUTPUT_DIR"] == str(out)  # the command line
    assert printed["TRAIN"]["WEIGHT_DECAY"] == 0.05                               # a default
    assert load_config(None, text=printed_text).dump() == printed_text
    assert not out.exists()
    assert train.main(["--config", str(ROOT / "configs/pretrain/k400_vit_s.yaml"), "TRAIN.ACCUM_STEPS", "4",
                       "OUTPUT_DIR", str(out), "--print-config"]) == 0    # the flag after the overrides
    assert capsys.readouterr().out == printed_text
    with pytest.raises(ConfigError, match="did you mean TRAIN.ACCUM_STEPS"):
        train.main(["--config", str(ROOT / "configs/pretrain/k400_vit_s.yaml"), "--print-config", "TRAIN.ACCUM_STEP", "4"])
    assert capsys.readouterr().out == ""


def test_batch_warning():
    cfg = load_config(ROOT / "configs/pretrain/k400_vit_b.yaml")      # 32 per GPU, recipe 2048
    assert train.batch_warning(cfg, 64) is None
    assert train.batch_warning(cfg, 8) == ("warning: global batch 256 (TRAIN.BATCH_SIZE 32 x 8 processes x "
                                     "TRAIN.ACCUM_STEPS 1) differs from the recipe's 2048 "
                                     "(TRAIN.RECIPE_GLOBAL_BATCH); TRAIN.ACCUM_STEPS 8 restores it")
    assert train.batch_warning(load_config(ROOT / "configs/pretrain/k400_vit_b.yaml", ["TRAIN.ACCUM_STEPS", "8"]), 8) is None
    assert "choose TRAIN.BATCH_SIZE x TRAIN.ACCUM_STEPS" in train.batch_warning(cfg, 3)
    assert train.batch_warning(load_config(ROOT / "configs/demo/pretrain.yaml"), 1) is None   # no recipe: no warning


def test_train_says_when_the_batch_is_not_the_recipes(tmp_path):
    """The line comes before anything loads: here the run then stops at the missing list."""
    from helpers import run_tool

    result = run_tool("tools/train.py", "--config", "configs/pretrain/k400_vit_s.yaml", "OUTPUT_DIR", tmp_path / "run",
                      "DATA.LIST_DIR", tmp_path / "nowhere", "TRAIN.BATCH_SIZE", "16", "TRAIN.ACCUM_STEPS", "2",
                      check=False)
    assert result.returncode != 0
    assert ("warning: global batch 32 (TRAIN.BATCH_SIZE 16 x 1 processes x TRAIN.ACCUM_STEPS 2) differs from the "
            "recipe's 2048 (TRAIN.RECIPE_GLOBAL_BATCH); TRAIN.ACCUM_STEPS 128 restores it") in result.stderr


def test_recipe_batch_does_not_block_a_resume():
    """A run saved before the recipes named their global batch resumes with today's config: the key
    only feeds the start-up warning, it changes nothing the run learns."""
    from videomae.engine.config import get_defaults
    from videomae.engine.run_folder import config_changes

    cfg = load_config(ROOT / "configs/pretrain/k400_vit_b.yaml")
    saved = cfg.clone()
    saved.defrost()
    saved.TRAIN.RECIPE_GLOBAL_BATCH = get_defaults().TRAIN.RECIPE_GLOBAL_BATCH
    assert config_changes(saved.dump(), cfg, 64, 64) == []
    saved.TRAIN.EPOCHS = 1600    # a key that changes the run still counts
    assert config_changes(saved.dump(), cfg, 64, 64) == ["TRAIN.EPOCHS 1600 -> 800"]
