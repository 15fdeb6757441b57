"""Pretraining's validation pass: the common-mask loss every TRAIN.EVAL_PERIOD epochs, the same
number the masking comparison reports as recon_common for the same weights."""
import json
import math
import os

import pytest

from helpers import ROOT, run_train, train_args
from videomae.engine.reconstruction import spread_subset


def rows_of(out, kind):
    return [r for r in map(json.loads, open(out / "metrics.jsonl")) if r["type"] == kind]


def test_val_rows_at_the_period_equal_compare_recon_common(tmp_path, synthetic_root):
    from videomae.compare.evaluate import eval_loader, load_pretrained, reconstruction
    from videomae.engine.config import load_config

    out = tmp_path / "run"
    # 24 training videos / batch 4 = 6 steps per epoch; validation after epoch 2 and at the end (epoch 3)
    result = run_train(out, synthetic_root, "TRAIN.EPOCHS", "3", "TRAIN.EVAL_PERIOD", "2", "MASK.TYPE", "tube")
    assert "validation: masked-cube loss under the common mask (random 0.9) on up to 1000 videos" in result.stdout
    val = rows_of(out, "val")
    assert [(r["step"], r["epoch"]) for r in val] == [(12, 2), (18, 3)]
    assert all(math.isfinite(r["recon_common"]) and r["videos"] == 8 for r in val)
    assert val[0]["recon_common"] != val[1]["recon_common"]
    assert any(name.startswith("events") for name in os.listdir(out / "tensorboard"))

    # the comparison's recon on the run's final weights: the same masks, views and batches
    args = train_args(out, synthetic_root, "TRAIN.EPOCHS", "3", "TRAIN.EVAL_PERIOD", "2", "MASK.TYPE", "tube")
    cfg = load_config(ROOT / args[2], args[3:])
    model = load_pretrained(cfg, str(out / "model.pt"), "cpu")
    _, loader = eval_loader(cfg, cfg.DATA.VAL_LIST)
    recon = reconstruction(model, loader, cfg.MASK.TYPE, cfg.MASK.RATIO, "cpu")
    assert recon["recon_common"] == pytest.approx(val[-1]["recon_common"], rel=1e-6)
    assert recon["recon_own"] != pytest.approx(recon["recon_common"], rel=1e-3)   # tube is not the common mask

    # the loss plot shows the validation points next to the training curve
    from videomae.engine.plots import plot_loss_curve

    png = plot_loss_curve(str(out / "metrics.jsonl"), str(tmp_path / "loss.png"))
    assert os.path.getsize(png) > 0


def test_off_without_val_videos_or_list_and_a_bounded_subset(tmp_path, synthetic_root):
    off = tmp_path / "off"
    run_train(off, synthetic_root, "TRAIN.EPOCHS", "1", "TRAIN.VAL_VIDEOS", "0")
    assert rows_of(off, "val") == []
    missing = tmp_path / "missing"
    result = run_train(missing, synthetic_root, "TRAIN.EPOCHS", "1", "DATA.VAL_LIST", "nosuch.csv")
    assert rows_of(missing, "val") == []
    assert "validation: off, no validation list at" in result.stdout
    few = tmp_path / "few"
    run_train(few, synthetic_root, "TRAIN.EPOCHS", "1", "TRAIN.VAL_VIDEOS", "3")
    [row] = rows_of(few, "val")
    assert row["videos"] == 3 and math.isfinite(row["recon_common"])


def test_spread_subset_covers_the_list():
    assert spread_subset(5, 10) == [0, 1, 2, 3, 4]
    assert spread_subset(100, 3) == [0, 50, 99]     # not the first three (lists are sorted by class)
    assert len(spread_subset(1000, 999)) == 999
