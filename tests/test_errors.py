"""Every predictable mistake ends a tool with one line and the exit code of README's table, never a
traceback: config files and keys, annotation lists, checkpoints given to the wrong tool, corrupt
evaluation videos. Each case runs a tool as a user would; config cases fail before any data loads."""
import json
import shutil
import subprocess

import pytest

from helpers import NOISE, PYTHON, ROOT, TINY, env, final_json, run_tool
from videomae.cli import EXIT_ERROR, EXIT_PREEMPTED, EXIT_USAGE

CLASSES = 8
FT_TINY = [*TINY, "DATA.NUM_CLASSES", str(CLASSES), "DATA.TEST_NUM_CLIPS", "1", "DATA.TEST_NUM_CROPS", "1",
           "TRAIN.MIXUP", "0.0", "TRAIN.CUTMIX", "0.0", "MODEL.DEPTH", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic_root):
    """The synthetic set's lists and videos, plus broken variants: a truncated video in val/test
    (3rd line), a list with a byte that is not UTF-8, a classes.json, config files with mistakes."""
    root = tmp_path_factory.mktemp("errors")
    for name in ("train.csv", "val.csv", "test.csv", "classes.json"):
        shutil.copy(synthetic_root / name, root / name)
    (root / "videos").symlink_to(synthetic_root / "videos")
    truncated = root / "cut.mp4"
    truncated.write_bytes((synthetic_root / "videos" / "val_00_003.mp4").read_bytes()[:1500])
    bad = root / "bad"
    bad.mkdir()
    shutil.copy(root / "classes.json", bad / "classes.json")
    (bad / "videos").symlink_to(synthetic_root / "videos")
    shutil.copy(truncated, bad / "cut.mp4")
    for name in ("val.csv", "test.csv"):
        lines = (root / name).read_text().splitlines()
        (bad / name).write_text("\n".join([*lines[:2], "cut.mp4 2", *lines[2:]]) + "\n")
    lines = (root / "train.csv").read_text().splitlines()
    shutil.copy(root / "train.csv", bad / "train.csv")
    latin = root / "latin"
    latin.mkdir()
    (latin / "train.csv").write_bytes(f"{lines[0]}\n".encode() + "caf\xe9.mp4 1\n".encode("latin-1"))
    configs = root / "configs"
    configs.mkdir()
    (configs / "missing_base.yaml").write_text("_BASE_: nowhere.yaml\nTRAIN:\n  EPOCHS: 1\n")
    (configs / "syntax.yaml").write_text("TRAIN:\n  EPOCHS: 1\n   BATCH_SIZE: 2\n")
    (configs / "empty.yaml").write_text("# nothing yet\n")
    (configs / "list.yaml").write_text("- TRAIN.EPOCHS\n- 1\n")
    return root


def tiny_model_file(path, task, data_root):
    """A model.pt as our runs write it (weights + the run's config), made in-process in a second."""
    from videomae.engine.checkpoint import save_model_file
    from videomae.engine.config import load_config
    from videomae.engine.classification import build_classifier_from_cfg
    from videomae.engine.tasks import PretrainTask

    config = "configs/demo/pretrain.yaml" if task == "pretrain" else "configs/demo/finetune.yaml"
    cfg = load_config(ROOT / config, [*FT_TINY, "DATA.ROOT", str(data_root), "DATA.LIST_DIR", str(data_root),
                                      "MODEL.PRETRAINED", "", "OUTPUT_DIR", str(path.parent)]
                      )
    if task == "pretrain":
        model = PretrainTask(cfg).build_model()
    else:
        model = build_classifier_from_cfg(cfg)
    save_model_file(model.state_dict(), str(path), {"config": cfg.dump(), "task": task})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("models")
    return {"pretrain": tiny_model_file(out / "pretrain.pt", "pretrain", data),
            "finetune": tiny_model_file(out / "finetune.pt", "finetune", data),
            "finetune_bad": tiny_model_file(out / "finetune_bad.pt", "finetune", data / "bad")}


def train(data_root, *overrides, config="configs/demo/pretrain.yaml"):
    return ["tools/train.py", "--config", config, "OUTPUT_DIR", data_root / "run", "DATA.ROOT", data_root,
            "DATA.LIST_DIR", data_root, *TINY, *overrides]


def finetune(data_root, *overrides):
    return train(data_root, *FT_TINY, "MODEL.PRETRAINED", "", *overrides, config="configs/demo/finetune.yaml")


# (id, arguments from the fixtures, exit code, what the one line says)
CASES = [
    # -- config: before any data loads ---------------------------------------------------------
    ("missing _BASE_", lambda d, m: ["tools/train.py", "--config", d / "configs/missing_base.yaml"],
     EXIT_USAGE, "missing_base.yaml: _BASE_ file not found: nowhere.yaml"),
    ("YAML syntax", lambda d, m: ["tools/train.py", "--config", d / "configs/syntax.yaml"],
     EXIT_USAGE, "syntax.yaml:3:14: YAML syntax error"),
    ("empty YAML", lambda d, m: ["tools/train.py", "--config", d / "configs/empty.yaml"],
     EXIT_USAGE, "empty.yaml is empty"),
    ("YAML list", lambda d, m: ["tools/train.py", "--config", d / "configs/list.yaml"],
     EXIT_USAGE, "list.yaml holds a YAML list, not KEY: value mappings"),
    ("config not found", lambda d, m: ["tools/train.py", "--config", d / "configs/nope.yaml"],
     EXIT_USAGE, "config file not found"),
    ("section given a value", lambda d, m: train(d, "TRAIN", "5"),
     EXIT_USAGE, "TRAIN is a section, not a value (its keys: BATCH_SIZE, ACCUM_STEPS"),
    ("misspelt model", lambda d, m: train(d, "MODEL.NAME", "pretrain_videomae_tiyn_patch16_224"),
     EXIT_USAGE, "not one of our models; did you mean pretrain_videomae_tiny_patch16_224?"),
    ("classifier for pretraining", lambda d, m: train(d, "MODEL.NAME", "videomae_vit_tiny_patch16_224"),
     EXIT_USAGE, "is a classifier model but TASK is pretrain: use a pretrain_videomae_* name, "
                 "e.g. pretrain_videomae_tiny_patch16_224"),
    ("pretraining model to fine-tune", lambda d, m: finetune(d, "MODEL.NAME", "pretrain_videomae_tiny_patch16_224"),
     EXIT_USAGE, "is a pretrain model but TASK is finetune: use a videomae_vit_* name"),
    ("image size vs patch", lambda d, m: train(d, "MODEL.IMG_SIZE", "36"),
     EXIT_USAGE, "MODEL.IMG_SIZE=36 is not a multiple of MODEL.PATCH_SIZE=8"),
    ("image size vs the model's patch", lambda d, m: train(d, "MODEL.PATCH_SIZE", "0", "MODEL.IMG_SIZE", "40"),
     EXIT_USAGE, "MODEL.IMG_SIZE=40 is not a multiple of the patch size of pretrain_videomae_tiny_patch16_224 (16"),
    ("frames vs tubelet", lambda d, m: train(d, "MODEL.NUM_FRAMES", "5"),
     EXIT_USAGE, "MODEL.NUM_FRAMES=5 is not a multiple of MODEL.TUBELET_SIZE=2"),
    ("negative lr", lambda d, m: train(d, "TRAIN.BASE_LR", "-1e-3"), EXIT_USAGE, "TRAIN.BASE_LR must be >= 0.0"),
    ("negative weight decay", lambda d, m: train(d, "TRAIN.WEIGHT_DECAY", "-0.05"),
     EXIT_USAGE, "TRAIN.WEIGHT_DECAY must be >= 0.0"),
    ("drop path 1", lambda d, m: train(d, "MODEL.DROP_PATH", "1.0"), EXIT_USAGE, "MODEL.DROP_PATH must be in [0.0, 1.0)"),
    ("decoder ratio", lambda d, m: train(d, "MASK.DECODER_RATIO", "1.5"),
     EXIT_USAGE, "MASK.DECODER_RATIO must be in [0.0, 1.0)"),
    ("negative workers", lambda d, m: train(d, "DATA.NUM_WORKERS", "-1"), EXIT_USAGE, "DATA.NUM_WORKERS must be >= 0"),
    ("log period 0", lambda d, m: train(d, "TRAIN.LOG_PERIOD", "0"), EXIT_USAGE, "TRAIN.LOG_PERIOD must be >= 1"),
    # -- annotation lists ----------------------------------------------------------------------
    ("list not UTF-8", lambda d, m: train(d / "latin"),
     EXIT_ERROR, "latin/train.csv:2: byte 0xe9 at column 4 is not UTF-8"),
    ("label beyond MODEL.NUM_CLASSES", lambda d, m: finetune(d, "DATA.NUM_CLASSES", "0", "MODEL.NUM_CLASSES", "4"),
     EXIT_ERROR, "label 4 is not a known class (the model has 4 classes"),
    ("list shorter than a global batch", lambda d, m: train(d, "TRAIN.BATCH_SIZE", "32", "TRAIN.ACCUM_STEPS", "2"),
     EXIT_USAGE, "train.csv has 24 videos, fewer than one global batch of 64"),
    # -- tools given the wrong thing -----------------------------------------------------------
    ("test.py: a pretraining model.pt", lambda d, m: ["tools/test.py", "--checkpoint", m["pretrain"]],
     EXIT_ERROR, "pretrain.pt is a pretraining checkpoint (its config says TASK pretrain): fine-tune it first"),
    ("test.py: missing checkpoint", lambda d, m: ["tools/test.py", "--checkpoint", d / "nope.pt"],
     EXIT_ERROR, "checkpoint not found"),
    ("test.py: more classes than classes.json",
     lambda d, m: ["tools/test.py", "--checkpoint", m["finetune"], "OUTPUT_DIR", d / "out", "MODEL.NUM_CLASSES", "10"],
     EXIT_ERROR, "classes.json names 8 classes but the model has 10"),
    ("visualize.py: a fine-tuned model.pt",
     lambda d, m: ["tools/visualize.py", "--checkpoint", m["finetune"], "--video", d / "cut.mp4"],
     EXIT_ERROR, "finetune.pt is a fine-tuned classifier (its config says TASK finetune)"),
    ("extract_features.py: missing checkpoint",
     lambda d, m: ["tools/extract_features.py", "--checkpoint", d / "nope.pt", "--list", d / "val.csv",
                   "--out", d / "features"],
     EXIT_ERROR, "checkpoint not found"),
    ("convert_checkpoint.py: unknown model",
     lambda d, m: ["tools/convert_checkpoint.py", "--src", m["finetune"], "--model", "videomae_vit_tiny_patch16",
                   "--out", d / "x.pt"],
     EXIT_USAGE, "--model 'videomae_vit_tiny_patch16' is not one of our models; did you mean videomae_vit_tiny_patch16_224?"),
    ("check_videos.py: a folder", lambda d, m: ["tools/check_videos.py", "--list", d],
     EXIT_ERROR, "--list is a folder, give the list file in it"),
    # -- a corrupt evaluation video: split and list file:line ------------------------------------
    ("test.py: corrupt video", lambda d, m: ["tools/test.py", "--checkpoint", m["finetune_bad"],
                                             "OUTPUT_DIR", d / "out"],
     EXIT_ERROR, "test video {bad}/test.csv:3 failed to load"),
    ("test.py: corrupt video, loader workers",
     lambda d, m: ["tools/test.py", "--checkpoint", m["finetune_bad"], "OUTPUT_DIR", d / "out",
                   "DATA.NUM_WORKERS", "1"],
     EXIT_ERROR, "test video {bad}/test.csv:3 failed to load"),
    ("extract_features.py: corrupt video",
     lambda d, m: ["tools/extract_features.py", "--checkpoint", m["pretrain"], "--list", d / "bad/val.csv",
                   "--out", d / "features", "DATA.ROOT", d / "bad"],
     EXIT_ERROR, "val video {bad}/val.csv:3 failed to load"),
    ("fine-tuning: corrupt val video",
     lambda d, m: finetune(d / "bad", "TRAIN.MAX_STEPS", "1", "TRAIN.EPOCHS", "1"),
     EXIT_ERROR, "val video {bad}/val.csv:3 failed to load"),
]


def lines_that_matter(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip() and not NOISE.search(line)]


@pytest.mark.parametrize("make_args, code, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_mistake_is_one_line_and_its_exit_code(data, models, make_args, code, message):
    result = run_tool(*make_args(data, models), check=False, timeout=300)
    output = lines_that_matter(result)
    assert result.returncode == code, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(output) <= 2, "\n".join(output)
    assert message.format(bad=data / "bad") in result.stderr, result.stderr


def test_skip_bad_videos_counts_and_lists_them(data, models, tmp_path):
    result = run_tool("tools/test.py", "--checkpoint", models["finetune_bad"], "--skip-bad-videos",
                      "OUTPUT_DIR", tmp_path)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics == final_json(result.stdout)
    videos = len((data / "bad/test.csv").read_text().splitlines())
    assert metrics["skipped"] == 1 and metrics["videos"] == videos - 1
    assert metrics["skipped_videos"] == [f"{data}/bad/test.csv:3 {data}/bad/cut.mp4"]
    predictions = (tmp_path / "test_predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + videos - 1 and "cut.mp4" not in "".join(predictions)


def test_a_bug_keeps_its_traceback_without_rank_prefixes(tmp_path):
    """torch.distributed prefixes tracebacks with [rank0]: once a process group exists; a single
    process gets Python's plain traceback back, and a real bug still shows one."""
    script = tmp_path / "tool.py"
    script.write_text(
        "import sys\nsys.path.insert(0, sys.argv[1])\n"
        "from videomae.cli import run_tool\n"
        "def main(argv):\n"
        "    from videomae.engine.distributed import init_distributed\n"
        "    init_distributed()\n"
        "    raise RuntimeError('a bug')\n"
        "sys.exit(run_tool(main))\n")
    result = subprocess.run([PYTHON, script, ROOT], capture_output=True, text=True, env=env(), timeout=120)
    assert result.returncode == 1 and "Traceback" in result.stderr and "RuntimeError: a bug" in result.stderr
    assert "[rank0]" not in result.stderr


def test_list_byte_order_mark_is_not_part_of_the_path(tmp_path):
    from videomae.data import read_video_list

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "list.csv").write_bytes("\ufeffa.mp4 3\n".encode())
    [record] = read_video_list(tmp_path / "list.csv", tmp_path)
    assert record.path == str(tmp_path / "a.mp4") and record.label == 3


def test_exit_codes_are_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for code in (0, EXIT_ERROR, EXIT_USAGE, EXIT_PREEMPTED):
        assert f"| {code} |" in readme


@pytest.mark.parametrize("overrides, message", [
    (["TRAIN.EPS", "0"], "TRAIN.EPS must be > 0.0, got 0.0"),
    (["TRAIN.MIN_LR", "-1e-6"], "TRAIN.MIN_LR must be >= 0.0"),
    (["MODEL.NAME", "vit_base_patch16_224"], "MODEL.NAME = 'vit_base_patch16_224' is not one of our models"),
    (["MODEL.NAME.SIZE", "1"], "MODEL.NAME is a value, not a section"),
    (["TRAIN.EMA", "1.0", "TASK", "finetune", "MODEL.NAME", "videomae_vit_base_patch16_224"],
     r"TRAIN.EMA must be in \[0.0, 1.0\)"),
    (["DATA.TRAIN_CROP_SCALE", "(0.9, 0.5)"], "DATA.TRAIN_CROP_SCALE must be"),
    (["TRAIN.BATCH_SIZE", "many"], "TRAIN.BATCH_SIZE must be of type int, got 'many'"),
])
def test_config_rules(overrides, message):
    from videomae.engine.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_yaml_values_and_a_model_of_your_own(tmp_path):
    from videomae.engine.config import load_config

    (tmp_path / "lr.yaml").write_text("TRAIN:\n  BASE_LR: 1\n")   # an int for a float key, as on the command line
    assert load_config(tmp_path / "lr.yaml").TRAIN.BASE_LR == 1.0
    plugin = tmp_path / "my_model.py"
    plugin.write_text("from timm.models import register_model\n"
                      "from videomae.models import build_pretrain_model\n\n"
                      "@register_model\n"
                      "def my_tiny_videomae(pretrained=False, **kwargs):\n"
                      "    return build_pretrain_model('tiny', **kwargs)\n")
    cfg = load_config(None, ["IMPORTS", str(plugin), "MODEL.NAME", "my_tiny_videomae"])
    assert cfg.MODEL.NAME == "my_tiny_videomae"
