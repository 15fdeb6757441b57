"""Bad training videos over the whole run: the stop rule, the counts that travel with batches, and
tools/train.py end to end (each file listed once, counts per epoch, the one-line stop, bugs crash)."""
import re
import shutil

import numpy as np
import pytest
import torch

from helpers import NOISE, run_train
from videomae.data import ClipConfig, TooManyBadVideos, VideoDataset, collate_clips, read_video_list
from videomae.data.annotations import VideoRecord
from videomae.data.decoding import VideoTooShort, open_video, require_frames
from videomae.engine.bad_videos import BadVideoLedger, should_stop, wilson_lower
from videomae.engine.logs import read_metrics


# -- the stop rule ------------------------------------------------------------------------------------
def test_wilson_lower_bound_matches_the_textbook_value():
    assert wilson_lower(10, 100, z=1.959964) == pytest.approx(0.0552, abs=1e-4)   # 95% interval [0.0552, 0.1744]
    assert wilson_lower(0, 50) == 0.0 and wilson_lower(0, 0) == 0.0
    assert wilson_lower(5, 10) < 0.5 < wilson_lower(500, 600)


def test_limits_zero_and_one():
    assert should_stop(1, 1, 0.0, 1000)          # 0: the first bad video stops
    assert not should_stop(0, 10**6, 0.0, 1000)
    assert not should_stop(10**6, 10**6, 1.0, 1000)   # 1: never


def simulate(list_size: int, bad_files: int, limit: float, seed: int, epochs: int, batch: int = 4):
    """A training run's loads through the ledger: one permutation per epoch, a bad file replaced by a
    random other video (as the dataset does), counts combined at every batch (LOG_PERIOD 1) and at
    epoch ends. Returns the epoch in which the run stopped, or None."""
    rng = np.random.default_rng(seed)
    bad = set(rng.choice(list_size, bad_files, replace=False).tolist())
    records = [VideoRecord(f"v{i}.mp4", -1, where=f"train.csv:{i + 1}") for i in range(list_size)]
    ledger = BadVideoLedger(records, limit, None, is_main=True, world_size=1, device="cpu", info=lambda _: None)
    for epoch in range(epochs):
        order = rng.permutation(list_size)
        try:
            for start in range(0, list_size - batch + 1, batch):
                loads, failures = 0, []
                for index in order[start:start + batch]:
                    index = int(index)
                    while True:
                        loads += 1
                        if index not in bad:
                            break
                        failures.append((index, "cannot decode"))
                        index = int(rng.integers(list_size))
                ledger.note({"loads": [loads], "load_failures": failures})
                ledger.combined(ledger.counts())
            ledger.sync()
        except TooManyBadVideos:
            return epoch
    return None


@pytest.mark.parametrize("list_size, bad_files", [(27, 1), (54, 2), (270, 10)])
def test_a_list_below_the_limit_never_stops(list_size, bad_files):
    """3.7% bad files at DATA.MAX_BAD_RATIO 0.05: 20 seeds, 30 epochs each, checked at every step."""
    stopped = [seed for seed in range(20) if simulate(list_size, bad_files, 0.05, seed, epochs=30) is not None]
    assert stopped == []


@pytest.mark.parametrize("list_size, bad_files", [(30, 6), (50, 10), (500, 100)])
def test_a_list_with_a_fifth_bad_stops_within_two_passes(list_size, bad_files):
    epochs = [simulate(list_size, bad_files, 0.05, seed, epochs=10) for seed in range(20)]
    assert all(e is not None and e < 2 for e in epochs), epochs


def test_the_ledger_lists_each_file_once_and_counts_epochs(tmp_path):
    records = [VideoRecord(f"v{i}.mp4", -1, where=f"train.csv:{i + 1}") for i in range(10)]
    lines, log = [], tmp_path / "bad_videos.txt"
    ledger = BadVideoLedger(records, 1.0, str(log), is_main=True, world_size=1, device="cpu", info=lines.append)
    for epoch in range(3):
        batch = {"video": torch.zeros(2), "loads": [3, 2], "load_failures": [(4, "truncated"), (7, "a still")]}
        ledger.note(batch)
        assert set(batch) == {"video"}   # the metadata does not reach the model
        ledger.combined(ledger.counts())
        ledger.sync()
        assert ledger.end_epoch(epoch + 1) == {"loads": 5, "bad_loads": 2, "bad_files": 2}
    listed = [line for line in lines if line.startswith("bad video")]
    assert listed == ["bad video train.csv:5 (another video is read in its place): truncated",
                      "bad video train.csv:8 (another video is read in its place): a still"]
    assert log.read_text().splitlines() == ["v4.mp4\ttrain.csv:5\ttruncated", "v7.mp4\ttrain.csv:8\ta still"]
    assert (ledger.loads, ledger.bad) == (15, 6)
    # a resumed run reads the list back: nothing is listed twice
    again = BadVideoLedger(records, 1.0, str(log), is_main=True, world_size=1, device="cpu", info=lines.append,
                           resume=True)
    again.note({"loads": [2], "load_failures": [(4, "truncated")]})
    again.combined(again.counts())
    assert len(log.read_text().splitlines()) == 2 and len([x for x in lines if x.startswith("bad video")]) == 2


# -- the data side ------------------------------------------------------------------------------------
def test_min_frames_comes_from_the_config():
    from videomae.engine.config import ConfigError, load_config
    from videomae.engine.data import min_frames

    cfg = load_config(None, ["MODEL.NUM_FRAMES", "16", "DATA.SAMPLING_RATE", "4"])
    assert min_frames(cfg, "pretrain") == min_frames(cfg, "train") == 16   # 0: one clip's frames
    assert min_frames(cfg, "val") == min_frames(cfg, "test") == 1          # evaluation takes every video
    assert min_frames(load_config(None, ["DATA.MIN_FRAMES", "40"]), "pretrain") == 40
    with pytest.raises(ConfigError, match="DATA.MIN_FRAMES must be >= 0"):
        load_config(None, ["DATA.MIN_FRAMES", "-1"])


def test_the_limit_may_change_on_resume():
    from videomae.engine.run_folder import RESUME_ALLOWED

    assert "DATA.MAX_BAD_RATIO" in RESUME_ALLOWED and "DATA.MIN_FRAMES" not in RESUME_ALLOWED


def write_bad_files(folder, synthetic_root):
    """A truncated mp4, an empty file, a PNG renamed .mp4 and a 3-frame video."""
    from PIL import Image

    from videomae.data.synthetic import render_clip, write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    good = synthetic_root / "videos" / "train_02_000.mp4"
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (folder / "empty.mp4").write_bytes(b"")
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(folder / "still.png")
    shutil.move(folder / "still.png", folder / "still.mp4")
    write_mp4(folder / "three.mp4", render_clip(0, 3, 48, 64))
    return [folder / name for name in ("truncated.mp4", "empty.mp4", "still.mp4", "three.mp4")]


def test_stills_and_short_videos_are_too_short(tmp_path, synthetic_root):
    _, _, still, three = write_bad_files(tmp_path, synthetic_root)
    for path, kind in ((still, "a still image"), (three, "3 frames")):
        with open_video(path) as reader:   # they decode ...
            with pytest.raises(VideoTooShort, match=f"{kind}, fewer than DATA.MIN_FRAMES=4"):
                require_frames(reader, 4)   # ... but are not videos a clip can be cut from


def make_list(folder, synthetic_root, bad, copies=1):
    good = [f"{synthetic_root / 'videos' / f'train_{c:02d}_{k:03d}.mp4'} {c}" for c in range(8) for k in range(3)]
    lines = good * copies + [f"{path} 0" for path in bad]
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    return folder / "train.csv"


def test_items_carry_their_failures_and_bugs_are_not_bad_videos(tmp_path, synthetic_root):
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    records = read_video_list(make_list(tmp_path, synthetic_root, bad))
    ds = VideoDataset(records, "pretrain", ClipConfig(num_frames=4, sampling_rate=2, img_size=32, min_frames=4))
    first_bad = len(records) - 4
    items = [ds[(0, 0, row, first_bad + row)] for row in range(4)]
    for row, item in enumerate(items):
        assert item["index"] < first_bad and item["load_failures"][0][0] == first_bad + row
    batch = collate_clips(items)
    assert batch["video"].shape == (4, 3, 4, 32, 32)
    assert batch["loads"] == [4 + len(batch["load_failures"])] and len(batch["load_failures"]) >= 4
    assert "fewer than DATA.MIN_FRAMES=4" in dict(batch["load_failures"])[first_bad + 3]

    def buggy(frames, rng):
        raise ValueError("a transform bug")
    ds.transform = buggy
    with pytest.raises(ValueError, match="a transform bug"):   # not swallowed as a bad video
        ds[(0, 0, 0, 0)]


def test_a_list_of_only_bad_videos_stops_in_the_worker(tmp_path, synthetic_root):
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    records = read_video_list(make_list(tmp_path, synthetic_root, bad, copies=0))
    ds = VideoDataset(records, "pretrain", ClipConfig(num_frames=4, img_size=32, min_frames=4))
    with pytest.raises(TooManyBadVideos, match=r"11 videos in a row failed to load \(last: .*train.csv:\d: "):
        ds[0]


# -- tools/train.py end to end ------------------------------------------------------------------------
def tiny_run(tmp_path, synthetic_root, bad, *overrides, copies=1, nproc=1, check=True):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    make_list(data, synthetic_root, bad, copies=copies)
    return run_train(tmp_path / "run", data, "DATA.NUM_WORKERS", 2, *overrides, nproc=nproc, check=check)


def listed_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("bad video ")]


def check_listed_once(result, run, bad):
    lines = listed_lines(result.stdout)
    assert len(lines) == len(bad), "\n".join(lines)
    for path in bad:
        assert sum(str(path) in line for line in lines) == 1
    assert sorted(row.split("\t")[0] for row in (run / "bad_videos.txt").read_text().splitlines()) == \
        sorted(map(str, bad))


@pytest.mark.slow
def test_bad_files_are_listed_once_and_counted_per_epoch(tmp_path, synthetic_root):
    """28 videos, 4 bad (truncated, empty, a still, 3 frames); 3 epochs of 7 steps through 2
    persistent workers: every video is drawn every epoch, so loads = 28 + failed loads."""
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    result = tiny_run(tmp_path, synthetic_root, bad, "TRAIN.EPOCHS", 3, "DATA.MAX_BAD_RATIO", 0.5)
    run = tmp_path / "run"
    check_listed_once(result, run, bad)
    lines = listed_lines(result.stdout)
    assert any("three.mp4 has 3 frames, fewer than DATA.MIN_FRAMES=4" in line for line in lines)
    assert any("still.mp4 has a still image" in line for line in lines)
    assert all(re.match(rf"bad video {re.escape(str(tmp_path))}/data/train.csv:2[5-8] ", line) for line in lines)
    epochs = read_metrics(run / "metrics.jsonl", "epoch")
    assert [row["epoch"] for row in epochs] == [1, 2, 3]
    for row in epochs:
        assert row["bad_loads"] >= 4 and row["loads"] == 28 + row["bad_loads"] and row["bad_files"] == 4
    assert sum(f"epoch {e}: " in result.stdout for e in (1, 2, 3)) == 3   # a log line per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("epoch/bad_loads")] == [row["bad_loads"] for row in epochs]


@pytest.mark.slow
def test_a_resumed_run_keeps_the_counts_and_lists_nothing_twice(tmp_path, synthetic_root):
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    first = tiny_run(tmp_path, synthetic_root, bad, "TRAIN.EPOCHS", 2, "TRAIN.MAX_STEPS", 7, "DATA.MAX_BAD_RATIO", 0.5,
                     "DATA.NUM_WORKERS", 0)
    assert len(listed_lines(first.stdout)) == 4
    second = tiny_run(tmp_path, synthetic_root, bad, "TRAIN.EPOCHS", 2, "DATA.MAX_BAD_RATIO", 0.5,
                      "DATA.NUM_WORKERS", 0)
    assert "resumed from" in second.stdout and listed_lines(second.stdout) == []
    assert len((tmp_path / "run" / "bad_videos.txt").read_text().splitlines()) == 4
    epochs = read_metrics(tmp_path / "run" / "metrics.jsonl", "epoch")
    assert [row["epoch"] for row in epochs] == [1, 2] and epochs[1]["bad_files"] == 4
    bad_loads, loads = map(int, re.search(r"epoch 2: .*run so far: (\d+) of (\d+)", second.stdout).groups())
    assert (bad_loads, loads) == (sum(r["bad_loads"] for r in epochs), sum(r["loads"] for r in epochs))


@pytest.mark.slow
def test_two_ranks_count_and_list_together(tmp_path, synthetic_root):
    """32 videos over 2 ranks (4 steps of 2 x 4 per epoch): the epoch rows count both ranks' loads,
    and a file either rank meets is listed once."""
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    listing = make_list(data, synthetic_root, bad)
    with open(listing, "a") as handle:   # 28 good lines: 24 + 4 repeated
        handle.writelines(line + "\n" for line in listing.read_text().splitlines()[:4])
    result = run_train(tmp_path / "run", data, "DATA.NUM_WORKERS", 0, "TRAIN.EPOCHS", 2, "DATA.MAX_BAD_RATIO", 0.5,
                       "TRAIN.LOG_PERIOD", 3, nproc=2)
    run = tmp_path / "run"
    check_listed_once(result, run, bad)
    for row in read_metrics(run / "metrics.jsonl", "epoch"):
        assert row["bad_loads"] >= 4 and row["loads"] == 32 + row["bad_loads"] and row["bad_files"] == 4


def one_line_error(result) -> str:
    """Our one `error: ` line; every other stderr line is noise. A loader worker's decord log line
    can be written around ours (decord writes its prefix and its message separately), so ours is
    taken from its `error: ` on, wherever in a line it starts."""
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    ours = [line[line.index("error: "):] for line in lines if "error: " in line]
    # decord's message without its prefix, when the prefix went before our line
    others = [line for line in lines if "error: " not in line and not NOISE.search(line)
              and not line.startswith("ERROR opening: ")]
    assert len(ours) == 1 and not others, "\n".join(ours + others)
    return ours[0]


@pytest.mark.slow
def test_a_fifth_bad_stops_with_one_line(tmp_path, synthetic_root):
    """24 good videos and 6 bad ones (20%) at the default DATA.MAX_BAD_RATIO 0.05."""
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    extra = [tmp_path / "bad" / f"cut{i}.mp4" for i in range(2)]
    for path in extra:
        shutil.copy(bad[0], path)
    line = one_line_error(tiny_run(tmp_path, synthetic_root, bad + extra, "TRAIN.EPOCHS", 10, check=False))
    assert re.match(r"error: \d+ of \d+ training video loads failed \(6 different files of 30 in .*train.csv, "
                    r"listed in .*bad_videos.txt\); the bad share is at 99.9% confidence at least \d+\.\d%, above "
                    r"DATA.MAX_BAD_RATIO=0.05\. .*raise DATA.MAX_BAD_RATIO", line), line
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_a_worker_error_is_one_line(tmp_path, synthetic_root):
    """Only bad videos: a loader worker gives up after 11 in a row; the user sees our line, not the
    worker's chained traceback."""
    bad = write_bad_files(tmp_path / "bad", synthetic_root)
    line = one_line_error(tiny_run(tmp_path, synthetic_root, bad * 2, copies=0, check=False))
    assert re.match(r"error: 11 videos in a row failed to load \(last: .*train.csv:\d: .*\); is DATA.ROOT right\?$",
                    line), line


BUGGY_TRANSFORM = """
import videomae.engine.data as data


def broken_transform(size, flip=False):
    def transform(frames, rng):
        raise IndexError("crop box outside the frame: a bug in a transform")
    return transform


data.pretrain_transform = broken_transform
"""


def test_a_transform_bug_crashes_with_its_traceback(tmp_path, synthetic_root):
    (tmp_path / "broken.py").write_text(BUGGY_TRANSFORM)
    result = tiny_run(tmp_path, synthetic_root, [], "TRAIN.EPOCHS", 1, "IMPORTS", tmp_path / "broken.py", check=False)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "IndexError" in result.stderr
    assert 'raise IndexError("crop box outside the frame' in result.stderr   # the worker's own traceback
    assert "bad video" not in result.stdout and "training video loads failed" not in result.stderr
