"""A trained head is never silently replaced: tools/test.py and tools/convert_checkpoint.py take the
class count from the checkpoint, refuse another one in one line, and replace a head only when asked."""
import json

import pytest
import torch

from helpers import TINY, run_tool
from videomae.cli import EXIT_USAGE
from videomae.convert import CheckpointError, load_checkpoint, open_checkpoint
from videomae.models import build_classifier

# the geometry TINY gives the demo fine-tuning config: 4 frames of 32x32, 8x8 cubes, 4 blocks
GEOMETRY = dict(num_frames=4, img_size=32, patch_size=8, tubelet_size=2, depth=4)
FT = ["--config", "configs/demo/finetune.yaml"]


def classifier_file(path, num_classes, seed=0, **geometry):
    torch.manual_seed(seed)
    model = build_classifier("tiny", num_classes=num_classes, **(geometry or GEOMETRY))
    torch.save({"model": model.state_dict()}, path)
    return model.state_dict()


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.strip() and "DeepSpeed" not in line
            and "No CUDA runtime" not in line]


def test_loader_refuses_another_class_count_when_the_head_is_evaluated():
    state = build_classifier("tiny", num_classes=174, **GEOMETRY).state_dict()
    with pytest.raises(CheckpointError, match="has a trained 174-class head but the model was built for 5"):
        load_checkpoint(build_classifier("tiny", num_classes=5, **GEOMETRY), state, require_classifier=True)
    fresh = build_classifier("tiny", num_classes=174, **GEOMETRY)
    before = fresh.head.weight.detach().clone()
    report = load_checkpoint(fresh, state, new_head=True)
    assert {k for k, _ in report.dropped} == {"head.weight", "head.bias"} and torch.equal(fresh.head.weight, before)
    assert open_checkpoint(state).num_classes == 174
    assert open_checkpoint({k: v for k, v in state.items() if not k.startswith("head.")}).num_classes is None


def test_tools_test_refuses_a_wrong_class_count_in_one_line(tmp_path):
    ckpt = tmp_path / "ft.pth"
    classifier_file(ckpt, 5)
    result = run_tool("tools/test.py", *FT, "--checkpoint", ckpt, "OUTPUT_DIR", tmp_path / "out",
                      "DATA.LIST_DIR", tmp_path, "DATA.ROOT", tmp_path, *TINY, "DATA.NUM_CLASSES", "8", check=False)
    assert result.returncode == EXIT_USAGE, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "has a trained 5-class head but the config says 8 classes" in lines[0]
    assert not (tmp_path / "out" / "test_metrics.json").exists()


def test_tools_test_takes_the_class_count_from_the_checkpoint(tmp_path, synthetic_root):
    ckpt = tmp_path / "ft.pth"
    classifier_file(ckpt, 8)
    result = run_tool("tools/test.py", *FT, "--checkpoint", ckpt, "OUTPUT_DIR", tmp_path / "out",
                      "DATA.LIST_DIR", synthetic_root, "DATA.ROOT", synthetic_root, *TINY,
                      "DATA.NUM_CLASSES", "0", "DATA.TEST_NUM_CLIPS", "1", "DATA.TEST_NUM_CROPS", "1")
    assert "head" not in "".join(line for line in result.stdout.splitlines() if "dropped" in line)
    assert json.loads((tmp_path / "out" / "test_metrics.json").read_text())["videos"] == 8


CONVERT = ["tools/convert_checkpoint.py", "--model", "videomae_vit_tiny_patch16_224", "--num-frames", "4",
           "--img-size", "32"]


def test_convert_keeps_a_174_class_head_and_replaces_it_only_when_asked(tmp_path):
    src = tmp_path / "ssv2_ft.pth"
    state = classifier_file(src, 174, num_frames=4, img_size=32)

    run_tool(*CONVERT, "--src", src, "--out", tmp_path / "kept.pt")
    kept = torch.load(tmp_path / "kept.pt", weights_only=True)["model"]
    assert torch.equal(kept["head.weight"], state["head.weight"]) and torch.equal(kept["head.bias"], state["head.bias"])

    refused = run_tool(*CONVERT, "--src", src, "--num-classes", "400", "--out", tmp_path / "x.pt", check=False)
    assert refused.returncode == EXIT_USAGE and not (tmp_path / "x.pt").exists()
    lines = error_lines(refused)
    assert len(lines) == 1 and "has a trained 174-class head" in lines[0] and "--new-head" in lines[0], lines

    replaced = run_tool(*CONVERT, "--src", src, "--num-classes", "400", "--new-head", "--out", tmp_path / "new.pt")
    assert "trained head replaced by a fresh one" in replaced.stdout
    new = torch.load(tmp_path / "new.pt", weights_only=True)["model"]
    assert new["head.weight"].shape == (400, 192)
    assert torch.equal(new["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
