"""Nothing from a file a user points at runs: DeepSpeed checkpoint folders are consolidated by our
weights-only reader (bit for bit what DeepSpeed's own unpickling consolidation gives), and a config
stored with a checkpoint is data (its IMPORTS are not imported, its OUTPUT_DIR is not written to).
End to end through every entry point that reads a checkpoint."""
import contextlib
import io
import os
import sys
import types

import pytest
import torch

from helpers import TINY, run_tool, run_train

PRE = ["--config", "configs/demo/pretrain.yaml"]
FT = ["--config", "configs/demo/finetune.yaml"]
FT_TINY = [*TINY, "DATA.NUM_CLASSES", "8", "DATA.TEST_NUM_CLIPS", "1", "DATA.TEST_NUM_CROPS", "1"]


def data_args(root):
    return ["DATA.ROOT", str(root), "DATA.LIST_DIR", str(root)]


class Payload:
    """Pickled as a call of os.mkdir(marker): whatever unpickles it with weights_only=False makes
    the marker folder."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write_malicious_deepspeed_folder(folder, marker):
    """A ZeRO-2 tag folder shaped like DeepSpeed's, with a payload in each file."""
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}, "buffer_names": [], "param_shapes": [{"w": torch.Size([2])}],
                "shared_params": {}, "ds_version": Payload(marker)}, folder / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1, "ds_version": Payload(marker),
                                         "single_partition_of_fp32_groups": [torch.zeros(2)]}},
               folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return folder


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "MARKER"
    return write_malicious_deepspeed_folder(tmp_path / "ds" / "global_step1", marker), marker


def test_the_payload_runs_under_deepspeeds_own_reader(malicious):
    """The drill is live: DeepSpeed's consolidation unpickles the payload (what the tools used to do)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder, marker = malicious
    with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
        get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    assert marker.exists()


def test_reader_refuses_the_payload(malicious):
    from videomae.convert import CheckpointError
    from videomae.convert.formats import read_state_dict

    folder, marker = malicious
    for path in (folder, folder.parent):   # the tag folder, or the folder holding it (via `latest`)
        (folder.parent / "latest").write_text(folder.name)
        with pytest.raises(CheckpointError, match=r"refers to posix\.mkdir: only tensors"):
            read_state_dict(path)
    assert not marker.exists()


def test_deepspeed_names_become_inert_records(tmp_path, monkeypatch):
    """A `deepspeed.*` name in a checkpoint is never resolved: even a class that exists (here one
    whose constructor makes the marker) is read as a record holding its arguments."""
    from videomae.convert.zero import DeepSpeedRecord, load_weights_only

    marker = tmp_path / "MARKER"
    module = types.ModuleType("deepspeed.test_hostile")

    class Hostile:
        def __init__(self, path):
            os.mkdir(path)

        def __reduce__(self):
            return Hostile, (str(marker),)

    Hostile.__module__, Hostile.__qualname__ = module.__name__, "Hostile"
    module.Hostile = Hostile
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save({"w": torch.ones(3), "x": Hostile.__new__(Hostile)}, tmp_path / "f.pt")
    loaded = load_weights_only(str(tmp_path / "f.pt"))
    assert torch.equal(loaded["w"], torch.ones(3)) and not marker.exists()
    assert isinstance(loaded["x"], DeepSpeedRecord) and loaded["x"].args == (str(marker),)
    torch.load(tmp_path / "f.pt", weights_only=False)   # the control: resolving the name runs it
    assert marker.exists()


# -- the reader against DeepSpeed's consolidation, on checkpoints our trainer wrote -----------------

# each stage with both precisions and both world sizes; every precision with both world sizes
ZERO_RUNS = [(1, "fp32", 1), (1, "bf16", 2), (2, "fp32", 2), (2, "bf16", 1), (3, "fp32", 1), (3, "bf16", 2)]


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory, synthetic_root):
    runs = {}

    def get(stage, precision, nproc):
        if (stage, precision, nproc) not in runs:
            out = tmp_path_factory.mktemp(f"zero{stage}_{precision}_{nproc}")
            run_train(out, synthetic_root, "TRAIN.MAX_STEPS", 1, "TRAIN.BATCH_SIZE", 2, "DEEPSPEED.ZERO_STAGE", stage,
                      "DEEPSPEED.PRECISION", precision, "LOG.TENSORBOARD", "False", nproc=nproc)
            runs[stage, precision, nproc] = out
        return runs[stage, precision, nproc]

    return get


def bits(tensor):
    return tensor.contiguous().flatten().view(torch.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("stage, precision, nproc", ZERO_RUNS)
def test_reader_equals_deepspeed_consolidation(zero_run, stage, precision, nproc):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from videomae.convert.formats import read_state_dict
    from videomae.convert.zero import read_deepspeed_folder

    out = zero_run(stage, precision, nproc)
    ckpt_dir = out / "checkpoints"
    tag = (ckpt_dir / "LATEST").read_text()
    files = os.listdir(ckpt_dir / tag)
    shards = [f for f in files if f.endswith("optim_states.pt")]
    # bf16 runs are autocast over fp32 weights: DeepSpeed keeps fp32 partitions under its plain names
    assert len(shards) == nproc and all(f.startswith("zero_pp_rank_") for f in shards)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        reference = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    ours = read_deepspeed_folder(str(ckpt_dir / tag))
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype == torch.float32 and ours[key].shape == value.shape, key
        assert torch.equal(bits(ours[key]), bits(value)), key
    # the run's model.pt is consolidated by the same reader; a tool pointed at the checkpoint folder gets it too
    written = torch.load(out / "model.pt", weights_only=True)["model"]
    via_folder, meta = read_state_dict(ckpt_dir)
    assert meta["source"] == "deepspeed"
    for key, value in reference.items():
        assert torch.equal(bits(written[key]), bits(value)) and torch.equal(bits(via_folder[key]), bits(value)), key


# -- every entry point, given a malicious DeepSpeed folder ----------------------------------------

def entry_points(root, ckpt, tmp):
    video = sorted((root / "videos").glob("val_*.mp4"))[0]
    return {
        "train_pretrain": ["tools/train.py", *PRE, "OUTPUT_DIR", tmp / "run", *data_args(root), *TINY,
                           "TRAIN.MAX_STEPS", "1", "MODEL.PRETRAINED", ckpt],
        "train_finetune": ["tools/train.py", *FT, "OUTPUT_DIR", tmp / "run", *data_args(root), *FT_TINY,
                           "TRAIN.MAX_STEPS", "1", "MODEL.PRETRAINED", ckpt],
        "test": ["tools/test.py", *FT, "--checkpoint", ckpt, *data_args(root), *FT_TINY],
        "convert_checkpoint": ["tools/convert_checkpoint.py", "--src", ckpt, "--model",
                               "pretrain_videomae_tiny_patch16_224", "--out", tmp / "converted.pt"],
        "visualize": ["tools/visualize.py", *PRE, "--checkpoint", ckpt, "--video", video, "--out", tmp / "pictures",
                      *data_args(root), *TINY],
        "extract_features": ["tools/extract_features.py", *PRE, "--checkpoint", ckpt, "--list", root / "val.csv",
                             "--out", tmp / "features", *data_args(root), *TINY],
    }


@pytest.mark.parametrize("tool", ["train_pretrain", "train_finetune", "test", "convert_checkpoint", "visualize",
                                  "extract_features"])
def test_malicious_deepspeed_folder_runs_nowhere(tool, malicious, synthetic_root, tmp_path):
    folder, marker = malicious
    args = entry_points(synthetic_root, folder, tmp_path)[tool]
    result = run_tool(*args, check=False)
    assert not marker.exists()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "refers to posix.mkdir" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr[-3000:]


# -- a config stored with a checkpoint is data ------------------------------------------------------

@pytest.fixture(scope="module")
def crafted(tmp_path_factory, synthetic_root):
    """Clean weights-only model.pt files whose stored config names a hook in IMPORTS and an
    OUTPUT_DIR elsewhere: a fine-tuned one (for tools/test.py) and a pretraining one."""
    from videomae.engine.checkpoint import save_model_file
    from videomae.engine.classification import build_classifier_from_cfg
    from videomae.engine.config import load_config
    from videomae.engine.tasks import PretrainTask

    tmp = tmp_path_factory.mktemp("crafted")
    marker, elsewhere = tmp / "MARKER", tmp / "elsewhere"
    (tmp / "hook.py").write_text(f"import os\nos.mkdir({str(marker)!r})\n")
    files = {}
    for kind, config, extra in (("finetune", "configs/demo/finetune.yaml", FT_TINY),
                                ("pretrain", "configs/demo/pretrain.yaml", TINY)):
        cfg = load_config(config, [*data_args(synthetic_root), *extra, "MODEL.PRETRAINED", ""])
        if kind == "finetune":
            model = build_classifier_from_cfg(cfg)
        else:
            task = PretrainTask(cfg)
            task.log = lambda line: None
            model = task.build_model()
        cfg = cfg.clone()
        cfg.defrost()
        cfg.IMPORTS, cfg.OUTPUT_DIR = str(tmp / "hook.py"), str(elsewhere)
        (tmp / kind).mkdir()
        files[kind] = tmp / kind / "model.pt"
        save_model_file(model.state_dict(), files[kind], {"config": cfg.dump(), "task": kind})
    return files, tmp / "hook.py", marker, elsewhere


def test_stored_imports_are_not_imported_but_the_command_line_is(crafted):
    from videomae.engine.config import checkpoint_config

    files, hook, marker, elsewhere = crafted
    cfg = checkpoint_config(str(files["finetune"]))
    assert cfg.IMPORTS == "" and not marker.exists()
    assert cfg.OUTPUT_DIR == str(files["finetune"].parent)   # next to the checkpoint, not the stored one
    assert checkpoint_config(str(files["finetune"]), None, ["OUTPUT_DIR", "mine"]).OUTPUT_DIR == "mine"
    # the control: the hook does run when the user names it
    checkpoint_config(str(files["finetune"]), None, ["IMPORTS", str(hook)])
    assert marker.exists()
    marker.rmdir()


@pytest.mark.parametrize("tool", ["test", "visualize", "extract_features"])
def test_stored_config_runs_nothing_and_writes_next_to_the_checkpoint(tool, crafted, synthetic_root, tmp_path):
    """Decided behaviour: the stored IMPORTS are not imported, one line says so, the tool proceeds
    with the stored model and data keys, and writes next to the checkpoint (or to --out)."""
    files, _, marker, elsewhere = crafted
    video = sorted((synthetic_root / "videos").glob("val_*.mp4"))[0]
    ckpt = files["finetune" if tool == "test" else "pretrain"]
    args = {"test": ["tools/test.py", "--checkpoint", ckpt],
            "visualize": ["tools/visualize.py", "--checkpoint", ckpt, "--video", video],
            "extract_features": ["tools/extract_features.py", "--checkpoint", ckpt, "--list",
                                 synthetic_root / "val.csv", "--out", tmp_path / "features"]}[tool]
    result = run_tool(*args, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists() and not elsewhere.exists()
    notes = [line for line in result.stderr.splitlines() if "IMPORTS" in line]
    assert len(notes) == 1 and "are not imported" in notes[0]
    written = {"test": ckpt.parent / "test_metrics.json",
               "visualize": ckpt.parent / "reconstructions" / f"{video.stem}.png",
               "extract_features": tmp_path / "features.npy"}[tool]
    assert written.exists()


def test_tools_test_writes_where_out_says(crafted, tmp_path):
    files, _, marker, elsewhere = crafted
    run_tool("tools/test.py", "--checkpoint", files["finetune"], "--out", tmp_path / "reports")
    assert {"test_metrics.json", "test_predictions.csv"} <= set(os.listdir(tmp_path / "reports"))
    assert not marker.exists() and not elsewhere.exists()
