"""Fine-tuning from our pretraining checkpoint, multi-view testing across ranks, tools/test.py,
linear probing and feature extraction -- end to end on the synthetic videos."""
import csv
import json

import numpy as np
import pytest
import torch

from helpers import TINY, final_json, run_tool, run_train

FT = ["--config", "configs/demo/finetune.yaml"]
FT_TINY = [*TINY, "DATA.NUM_CLASSES", "8", "TRAIN.EPOCHS", "2", "TRAIN.EVAL_PERIOD", "1", "DATA.TEST_NUM_CLIPS", "2",
           "DATA.TEST_NUM_CROPS", "3", "TRAIN.MIXUP", "0.8", "TRAIN.CUTMIX", "1.0"]


def data_args(root):
    return ["DATA.ROOT", root, "DATA.LIST_DIR", root]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("pretrain")
    run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 2)
    return out / "model.pt"


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, synthetic_root, pretrained):
    out = tmp_path_factory.mktemp("finetune")
    result = run_tool("tools/train.py", *FT, "OUTPUT_DIR", out, *data_args(synthetic_root), *FT_TINY,
                      "MODEL.PRETRAINED", pretrained)
    return out, result.stdout + result.stderr


def test_finetune_loads_pretrained_and_reports(finetuned):
    out, log = finetuned
    assert "pretraining-only (decoder)" in log and "newly initialised: fc_norm.weight, fc_norm.bias, head.weight" in log
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert sum(r["type"] == "val" for r in rows) == 2          # validation each epoch
    metrics = json.load(open(out / "test_metrics.json"))
    assert metrics["videos"] == 8 and metrics["views"] == "2x3"
    with open(out / "test_predictions.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 8 and {"path", "label", "prediction", "probability", "top5"} <= set(predictions[0])
    top1 = 100 * np.mean([p["label"] == p["prediction"] for p in predictions])
    assert top1 == pytest.approx(metrics["top1"])
    assert (out / "test_confusion.png").stat().st_size > 1000 and (out / "test_per_class.csv").exists()


def test_tools_test_reproduces_the_final_test(finetuned, synthetic_root, tmp_path):
    out, _ = finetuned
    # no --config: the fine-tuned model.pt carries the run's config (lists, frames, views)
    result = run_tool("tools/test.py", "--checkpoint", out / "model.pt", "OUTPUT_DIR", tmp_path)
    metrics = final_json(result.stdout)
    assert metrics["top1"] == pytest.approx(json.load(open(out / "test_metrics.json"))["top1"])
    assert metrics["views"] == "2x3"


def test_multi_view_merge_across_two_ranks(finetuned, synthetic_root, tmp_path):
    out, _ = finetuned
    result = run_tool("tools/test.py", *FT, "--checkpoint", out / "model.pt", "OUTPUT_DIR", tmp_path,
                      *data_args(synthetic_root), *FT_TINY, nproc=2)
    metrics = final_json(result.stdout)
    assert metrics["videos"] == 8   # 48 views over 2 ranks, each counted once
    single = json.load(open(out / "test_metrics.json"))
    assert metrics["top1"] == pytest.approx(single["top1"]) and metrics["top5"] == pytest.approx(single["top5"])


def test_tools_test_refuses_a_pretraining_checkpoint(pretrained, synthetic_root, tmp_path):
    result = run_tool("tools/test.py", *FT, "--checkpoint", pretrained, "OUTPUT_DIR", tmp_path,
                      *data_args(synthetic_root), *FT_TINY, check=False)
    assert result.returncode == 1 and "is a pretraining checkpoint" in result.stderr


def test_linear_probe_keeps_the_encoder_frozen(pretrained, synthetic_root, tmp_path):
    run_tool("tools/train.py", *FT, "TASK", "linprobe", "OUTPUT_DIR", tmp_path, *data_args(synthetic_root), *FT_TINY,
             "TRAIN.EPOCHS", "1", "MODEL.PRETRAINED", pretrained, "MODEL.DROP_PATH", "0.0")
    before = torch.load(pretrained, weights_only=True)["model"]
    after = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert torch.equal(after["blocks.3.attn.qkv.weight"], before["encoder.blocks.3.attn.qkv.weight"])
    assert torch.equal(after["patch_embed.proj.weight"], before["encoder.patch_embed.proj.weight"])
    assert not torch.equal(after["head.weight"], torch.zeros_like(after["head.weight"]))


def test_extract_features(pretrained, synthetic_root, tmp_path):
    run_tool("tools/extract_features.py", *FT, "--checkpoint", pretrained, "--list", synthetic_root / "val.csv",
             "--out", tmp_path / "val", *data_args(synthetic_root), *FT_TINY)
    features = np.load(tmp_path / "val.npy")
    assert features.shape == (8, 192) and np.isfinite(features).all()
    assert len(open(tmp_path / "val.csv").read().splitlines()) == 9
    # no --config: the pretraining run's own config, its encoder read as a classifier's
    run_tool("tools/extract_features.py", "--checkpoint", pretrained, "--list", synthetic_root / "val.csv",
             "--out", tmp_path / "stored", "DATA.FINETUNE_SAMPLING", "segment")
    assert np.allclose(np.load(tmp_path / "stored.npy"), features, atol=1e-5)


def test_cutmix_box_goes_through_every_frame():
    from timm.data import Mixup

    from videomae.engine.classification import mix_clips

    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=4, label_smoothing=0.0)
    video = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 3, 6, 16, 16).clone()
    boxes = 0
    for seed in range(6):
        np.random.seed(seed)  # timm draws lambda and the box from NumPy
        mixed, target = mix_clips(mixup, video.clone(), torch.arange(4))
        changed = mixed != video                       # (B, C, T, H, W)
        assert (changed == changed[:, :, :1]).all()    # the same box in every frame
        assert torch.allclose(target.sum(1), torch.ones(4))
        boxes += bool(changed.any())
    assert boxes >= 3


def test_ema_weights_are_written(pretrained, synthetic_root, tmp_path):
    run_tool("tools/train.py", *FT, "OUTPUT_DIR", tmp_path, *data_args(synthetic_root), *FT_TINY,
             "TRAIN.EPOCHS", "1", "TRAIN.EMA", "0.5", "MODEL.PRETRAINED", pretrained)
    main = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    ema = torch.load(tmp_path / "model_ema.pt", weights_only=True)["model"]
    assert set(ema) == set(main)
    assert not torch.equal(ema["head.weight"], main["head.weight"])  # an average, not a copy


@pytest.mark.slow
def test_visualize_compares_strategies_on_one_clip(pretrained, finetuned, synthetic_root, tmp_path):
    import importlib.util
    import re

    from videomae.convert import load_checkpoint
    from videomae.engine.config import load_config
    from videomae.engine.tasks import PretrainTask, normalize_on_device
    from videomae.masking import build_masking

    videos = sorted((synthetic_root / "videos").glob("val_*.mp4"))[:2]
    pre = ["--config", "configs/demo/pretrain.yaml", "--out", tmp_path, "--seed", "3", *data_args(synthetic_root),
           *TINY]
    # no --config: our model.pt carries the one it was trained with
    result = run_tool("tools/visualize.py", "--checkpoint", pretrained, "--masks", "tube,random,frame", "--video",
                      *videos, "--out", tmp_path, "--seed", "3")
    for video in videos:
        assert (tmp_path / f"{video.stem}.png").stat().st_size > 5000
    # each printed loss is the model's loss on that clip under that strategy's seeded mask
    spec = importlib.util.spec_from_file_location("visualize", "tools/visualize.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = load_config("configs/demo/pretrain.yaml", [*map(str, data_args(synthetic_root)), *TINY])
    model = PretrainTask(cfg).build_model().eval()
    load_checkpoint(model, pretrained)
    clip = normalize_on_device(tool.read_center_clip(str(videos[1]), cfg), "cpu")
    printed = dict(re.findall(rf"{re.escape(str(videos[1]))}: (\w+) .* loss ([0-9.]+)", result.stdout))
    assert set(printed) == {"tube", "random", "frame"}
    for name, loss in printed.items():
        mask = build_masking(name, cfg.MASK.RATIO)(1, model.grid_size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            assert float(loss) == pytest.approx(float(model(clip, mask).loss), abs=1e-4)
    # checkpoints without the decoder cannot reconstruct; an unknown strategy is named
    fine_tuned, _ = finetuned
    refused = run_tool("tools/visualize.py", "--checkpoint", fine_tuned / "model.pt", "--video", videos[0], *pre,
                       check=False)
    assert refused.returncode == 1 and "is a fine-tuned classifier checkpoint" in refused.stderr
    state = torch.load(pretrained, weights_only=True)["model"]
    encoder_only = {k: v for k, v in state.items() if k.startswith("encoder.")}   # as VideoMAE V2 ships some
    torch.save({"model": encoder_only}, tmp_path / "encoder_only.pth")
    refused = run_tool("tools/visualize.py", "--checkpoint", tmp_path / "encoder_only.pth", "--video", videos[0],
                       *pre, check=False)
    assert refused.returncode == 1 and "has no decoder" in refused.stderr
    unknown = run_tool("tools/visualize.py", "--checkpoint", pretrained, "--masks", "tubes", "--video", videos[0],
                       *pre, check=False)
    assert unknown.returncode == 2 and "unknown masking strategy ['tubes']" in unknown.stderr
