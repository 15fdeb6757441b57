"""Every shipped config loads, builds its model and its data pipeline: a wrong model name, an
unknown key or a pipeline that cannot take the config's geometry fails here, not after a cluster
job has loaded its data. Models are built on the meta device (ViT-H allocates nothing); the data
comes from the small synthetic set, through lists in a folder of their own (the shipped configs
name 400 or 174 classes; the synthetic set's classes.json names 8)."""
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))

from videomae.engine.config import load_config  # noqa: E402
from videomae.engine.data import build_dataset  # noqa: E402


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
    from train import build_task

    cfg = load_config(path, ["DATA.ROOT", str(synthetic_root), "DATA.LIST_DIR", str(lists),
                             "DATA.NUM_WORKERS", "0", "MODEL.PRETRAINED", ""])
    task = build_task(cfg)
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
