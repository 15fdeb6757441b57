"""The training loader: persistent workers seeded by each item's place in the run, batches that do
not depend on world size or worker count, and a resumed run that draws the clips of a straight one."""
import os
import signal

import pytest
import torch

from helpers import losses, run_train
from videomae.data import ClipConfig, VideoDataset, read_video_list
from videomae.engine.config import get_defaults
from videomae.engine.data import GlobalBatchSampler, ItemKey, build_train_loader


class PidDataset(VideoDataset):
    """Items that also say which process loaded them."""

    def __getitem__(self, key):
        return {**super().__getitem__(key), "pid": os.getpid()}


def train_loader(root, workers, epochs=3, batch=4, repeats=1, dataset_cls=VideoDataset):
    cfg = get_defaults()
    cfg.DATA.NUM_WORKERS, cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.EPOCHS = workers, batch, epochs
    cfg.DATA.LOADER_TIMEOUT = 120.0
    records = read_video_list(root / "train.csv", root)
    ds = dataset_cls(records, "pretrain", ClipConfig(num_frames=4, sampling_rate=2, img_size=32,
                                                     num_repeats=repeats))
    return build_train_loader(cfg, ds, world=1, rank=0)


def run_epochs(loader, sampler, epochs):
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch, 0)
        out.append(list(loader))
        assert len(out[-1]) == sampler.steps_per_epoch
    return out


def test_persistent_workers_reaugment_each_epoch(synthetic_root):
    loader, sampler = train_loader(synthetic_root, workers=2, dataset_cls=PidDataset)
    assert sampler.parts == 2   # a batch of 4 goes to both workers, 2 items each
    try:
        first = run_epochs(loader, sampler, 1)[0]
        pids = {int(p) for b in first for p in b["pid"]}
        assert len(pids) == 2 and os.getpid() not in pids
        for pid in pids:  # the main process owns shutdown: workers ignore SIGTERM
            os.kill(pid, signal.SIGTERM)
        loader.set_epoch(1, 0)
        second = list(loader)
    finally:
        loader.shutdown()
    assert {int(p) for b in second for p in b["pid"]} == pids   # no respawn at the epoch boundary
    for batches, epoch in ((first, 0), (second, 1)):
        # rows in sampler order, whichever worker loaded them
        want = [k.index for step in range(sampler.steps_per_epoch) for k in sampler.micro_batch(epoch, step, 0)]
        assert torch.cat([b["index"] for b in batches]).tolist() == want
    clips = [{int(i): v for b in batches for i, v in zip(b["index"], b["video"])} for batches in (first, second)]
    assert clips[0].keys() == clips[1].keys()
    assert all(not torch.equal(clips[0][i], clips[1][i]) for i in clips[0])   # new augmentation per epoch


def test_worker_count_does_not_change_the_batches(synthetic_root):
    runs = []
    for workers in (0, 2):
        loader, sampler = train_loader(synthetic_root, workers=workers, epochs=2, batch=6, repeats=2)
        try:
            runs.append(run_epochs(loader, sampler, 2))
        finally:
            loader.shutdown()
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            assert x["video"].shape == (12, 3, 4, 32, 32)
            assert torch.equal(x["video"], y["video"]) and torch.equal(x["index"], y["index"])


def test_resume_mid_stream_continues_where_it_stopped(synthetic_root):
    loader, sampler = train_loader(synthetic_root, workers=2, epochs=2)
    try:
        straight = [b["video"] for e in run_epochs(loader, sampler, 2) for b in e]
        loader.set_epoch(1, 2)   # a restart inside epoch 1 (as after a resume) skips its first 2 steps
        resumed = [b["video"] for b in loader]
    finally:
        loader.shutdown()
    per_epoch = sampler.steps_per_epoch
    assert len(resumed) == per_epoch - 2
    assert all(torch.equal(a, b) for a, b in zip(straight[per_epoch + 2:], resumed))


@pytest.mark.parametrize("world,accum", [(1, 4), (2, 2), (4, 1), (2, 1)])
def test_batches_do_not_depend_on_world_size(world, accum):
    """Global batch 16 as one process, or as `world` ranks x `accum` micro-steps: the same items,
    with the same keys (so the same augmentation), in the order micro-step m of rank r = chunk
    m * world + r."""
    reference = GlobalBatchSampler(64, 16, 1, 0, 1, seed=3, epochs=2)
    batch = 16 // (world * accum)
    streams = [list(GlobalBatchSampler(64, batch, world, rank, accum, seed=3, epochs=2, part_size=3))
               for rank in range(world)]
    parts = -(-batch // 3)
    for g, want in enumerate(list(reference)):   # one part per micro-batch in the reference
        got = []
        for m in range(accum):
            for r in range(world):
                start = (g * accum + m) * parts
                got += [k for part in streams[r][start:start + parts] for k in part]
        assert got == want and all(isinstance(k, ItemKey) for k in got)
    assert len(streams[0]) == 2 * reference.steps_per_epoch * accum * parts


def test_keyed_items_are_reproducible(synthetic_root):
    ds = VideoDataset(read_video_list(synthetic_root / "train.csv", synthetic_root), "pretrain",
                      ClipConfig(num_frames=4, img_size=32))
    a, b = ds[ItemKey(0, 1, 5, 3)], ds[ItemKey(0, 1, 5, 3)]
    c = ds[ItemKey(1, 1, 5, 3)]
    assert a["index"] == 3 and torch.equal(a["video"], b["video"]) and not torch.equal(a["video"], c["video"])


@pytest.mark.slow
def test_resumed_run_draws_the_clips_of_a_straight_one(tmp_path, synthetic_root):
    common = ["DATA.NUM_WORKERS", 2, "TRAIN.EPOCHS", 2]   # 6 steps an epoch
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(straight, synthetic_root, *common, "TRAIN.MAX_STEPS", 9)
    run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 4)    # stops inside the first epoch
    second = run_train(resumed, synthetic_root, *common, "TRAIN.MAX_STEPS", 9)
    assert "resumed from step_00000004" in second.stdout + second.stderr
    a, b = losses(straight), losses(resumed)
    assert len(a) == len(b) == 9
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_torchcodec_decodes_as_decord(synthetic_root):
    """DATA.BACKEND torchcodec: the same frames at the same indices as decord (mean absolute
    difference <= 3/255), also with a decode-time resize and repeated indices."""
    import numpy as np

    from videomae.data.decoding import decord_available, open_video, torchcodec_available

    if not (torchcodec_available() and decord_available()):
        if os.environ.get("CI"):
            pytest.fail("torchcodec (with FFmpeg's shared libraries) and decord must be installed in CI")
        pytest.skip("torchcodec not installed: pip install -e '.[torchcodec]' and FFmpeg's shared libraries")
    for record in read_video_list(synthetic_root / "train.csv", synthetic_root):
        for short_side in (None, 32):
            with open_video(record.path, "decord", short_side) as a, \
                    open_video(record.path, "torchcodec", short_side, fallback=False) as b:
                assert b.backend == "torchcodec" and len(a) == len(b)
                indices = [0, 3, 3, len(a) - 1, 1, len(a) // 2]
                x, y = a.get_frames(indices), b.get_frames(indices)
                assert x.shape == y.shape and y.dtype == np.uint8
                assert np.abs(x.astype(float) - y.astype(float)).mean() <= 3, record.path
    ds = VideoDataset(read_video_list(synthetic_root / "train.csv", synthetic_root), "pretrain",
                      ClipConfig(num_frames=4, img_size=32), backend="torchcodec")
    assert ds[ItemKey(0, 0, 0, 1)]["video"].shape == (3, 4, 32, 32)
