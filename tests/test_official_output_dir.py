"""An official VideoMAE / V2 fine-tuning `output_dir` written by DeepSpeed: tag folders named
`checkpoint-<epoch>` / `checkpoint-best` and DeepSpeed's own lowercase `latest` naming one of them."""
import pytest
import torch

from videomae.convert import CheckpointError, load_checkpoint, open_checkpoint
from videomae.models import build_classifier

GEOMETRY = dict(num_frames=4, img_size=32, patch_size=8, depth=2)


def official_output_dir(root, latest="checkpoint-best"):
    """Two tags (the newer-looking one is not the one `latest` names), DeepSpeed's metadata beside
    the module weights (no ZeRO partitions: the module holds the full weights), and a log."""
    states = {}
    for seed, tag in enumerate(["checkpoint-29", "checkpoint-best"]):
        torch.manual_seed(seed)
        state = build_classifier("tiny", num_classes=5, **GEOMETRY).state_dict()
        (root / tag).mkdir()
        torch.save({"module": state, "buffer_names": [], "param_shapes": [{k: v.shape for k, v in state.items()}],
                    "ds_version": "0.5.8", "global_steps": 290, "dp_world_size": 8, "mp_world_size": 1,
                    "epoch": 29}, root / tag / "mp_rank_00_model_states.pt")
        states[tag] = state
    (root / "latest").write_text(latest)
    (root / "log.txt").write_text('{"epoch": 29}\n')
    return states


def test_the_tag_latest_names_is_loaded(tmp_path):
    states = official_output_dir(tmp_path)
    model = build_classifier("tiny", num_classes=5, **GEOMETRY)
    report = load_checkpoint(model, tmp_path, require_classifier=True)
    assert not report.dropped and not report.new
    for key, value in model.state_dict().items():
        assert torch.equal(value, states["checkpoint-best"][key]), key
    assert open_checkpoint(tmp_path).num_classes == 5


def test_latest_naming_no_tag_is_refused(tmp_path):
    official_output_dir(tmp_path, latest="checkpoint-99")
    with pytest.raises(CheckpointError, match="its DeepSpeed `latest` names 'checkpoint-99', which holds no"):
        load_checkpoint(build_classifier("tiny", num_classes=5, **GEOMETRY), tmp_path)
