"""tools/extract_features.py: the feature it documents, snippets, layers, and ranks that share the list."""
import csv
import subprocess


import numpy as np
import pytest
import torch

from helpers import PYTHON, ROOT, env, free_port, load_tool

from videomae.models.factory import create_model


ef = load_tool("tools/extract_features.py")

GEOMETRY = ["MODEL.NUM_FRAMES", "4", "MODEL.IMG_SIZE", "32", "MODEL.PATCH_SIZE", "8", "MODEL.DEPTH", "2",
            "MODEL.NUM_CLASSES", "8", "MODEL.PRETRAINED", "", "DATA.NUM_WORKERS", "0", "DATA.SAMPLING_RATE", "2",
            "DATA.TEST_NUM_CLIPS", "1", "DATA.TEST_NUM_CROPS", "3", "TRAIN.BATCH_SIZE", "4", "LOG.PROGRESS", "False"]


def tiny_classifier():
    torch.manual_seed(0)
    return create_model("videomae_vit_tiny_patch16_224", num_classes=8, img_size=32, patch_size=8, num_frames=4,
                        tubelet_size=2, depth=2).eval()


def test_layers_and_the_documented_feature():
    """The last block is forward_features (tokens -> mean -> fc_norm); an earlier block differs."""
    model = tiny_classifier()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        last = ef.features(model, video, 2)
        assert torch.equal(last, model.forward_features(video))
        tokens = model.blocks[0](model.embed(video))
        assert torch.allclose(ef.features(model, video, 1), model.fc_norm(tokens.mean(1)))
        assert not torch.allclose(ef.features(model, video, 1), last)


def test_shards_cover_the_list_once():
    for n in (0, 1, 7, 48):
        for world in (1, 2, 3, 8):
            got = [i for r in range(world) for i in ef.shard(n, r, world)]
            assert got == list(range(n)), (n, world)
            assert all(len(ef.shard(n, r, world)) <= -(-n // world) for r in range(world))


def test_snippet_starts():
    assert ef.snippet_starts(24, 4, 6) == [0, 6, 12, 18]
    assert ef.snippet_starts(24, 16, 4) == [0, 4, 8]
    assert ef.snippet_starts(3, 4, 2) == [0]     # shorter than a snippet: one, last frame repeated


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_root):
    """A tiny classifier's weights and a 7-video list: 21 test views, so 2 ranks split one video's views."""
    folder = tmp_path_factory.mktemp("extract")
    torch.save({"model": tiny_classifier().state_dict()}, folder / "tiny.pth")
    (folder / "list.csv").write_text("".join((synthetic_root / "val.csv").read_text().splitlines(True)[:7]))
    return folder, synthetic_root


def extract(setup, out, *args, nproc=1):
    """Both runs on the device 2 ranks get (CPU with gloo unless there are 2 GPUs): a 1-rank run on
    a GPU would differ from 2 CPU ranks by the GPU's arithmetic, not by the sharding under test."""
    folder, root = setup
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                                      "--master_port", free_port()]
    cmd = [PYTHON, *launcher, "tools/extract_features.py", "--config", "configs/demo/finetune.yaml",
           "--checkpoint", str(folder / "tiny.pth"), "--list", str(folder / "list.csv"), "--out", str(out), *args,
           "DATA.ROOT", str(root), *GEOMETRY]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env(2), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    with open(f"{out}.csv", newline="") as handle:
        return np.load(f"{out}.npy"), list(csv.reader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--views", "test"], ["--snippet", "4", "--stride", "6", "--layer", "1"]],
                         ids=["videos", "snippets"])
def test_two_ranks_equal_one(setup, tmp_path, mode):
    one, rows_one = extract(setup, tmp_path / "one", *mode)
    two, rows_two = extract(setup, tmp_path / "two", *mode, nproc=2)
    assert rows_two == rows_one
    assert np.allclose(two, one, atol=1e-5) and np.isfinite(one).all()
    if "--snippet" in mode:   # 24-frame videos: snippets at 0, 6, 12, 18 of each of the 7
        assert one.shape == (28, 192) and rows_one[0] == ["row", "path", "label", "snippet", "start_frame"]
        assert [r[3:] for r in rows_one[1:5]] == [["0", "0"], ["1", "6"], ["2", "12"], ["3", "18"]]
    else:
        assert one.shape == (7, 192) and len(rows_one) == 8
