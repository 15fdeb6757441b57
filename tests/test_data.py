import json
import os
import shutil

import numpy as np
import pytest
import torch

from videomae.data import (AnnotationError, ClipConfig, TooManyBadVideos, VideoDataset, VideoDecodeError,
                           make_loader, open_video, read_video_list)
from videomae.data.sampling import dense_clip, dense_test_clips, segment_clip
from videomae.data.transforms import (HorizontalFlip, MultiScaleCrop, RandAugment, RandomErasing,
                                      RandomResizedCrop, ShortSideResize, ThreeCrop, eval_transform)


# -- decoding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bigbuckbunny.mp4", "carphone_pristine.mp4", "bikes.mp4"])
def test_backends_agree_on_sample_videos(sample_videos, name):
    path = sample_videos[name]
    decord_reader, pyav_reader = open_video(path, "decord"), open_video(path, "pyav")
    assert len(decord_reader) == len(pyav_reader) > 0
    assert decord_reader.fps == pytest.approx(pyav_reader.fps)
    n = len(decord_reader)
    indices = [n - 1, 0, 7, n // 2, n // 2 + 1, 7]  # unsorted, repeated, far seeks
    a, b = decord_reader.get_frames(indices), pyav_reader.get_frames(indices)
    assert a.dtype == np.uint8 and a.shape == b.shape and a.shape[0] == len(indices) and a.shape[-1] == 3
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.5
    assert np.array_equal(a[2], a[5])


def test_sample_video_sizes(sample_videos):
    assert open_video(sample_videos["bigbuckbunny.mp4"]).get_frames([0]).shape == (1, 720, 1280, 3)
    assert open_video(sample_videos["carphone_pristine.mp4"]).get_frames([0]).shape == (1, 144, 176, 3)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_time_short_side_resize(sample_videos, backend):
    frames = open_video(sample_videos["bigbuckbunny.mp4"], backend, short_side=128).get_frames([3])
    assert frames.shape == (1, 128, 228, 3)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_bytes_source(synthetic_root, backend):
    path = synthetic_root / "videos" / "train_00_000.mp4"
    from_bytes = open_video(path.read_bytes(), backend).get_frames([1, 5])
    assert np.array_equal(from_bytes, open_video(path, backend).get_frames([1, 5]))


def test_synthetic_frames_agree_exactly(synthetic_root):
    path = synthetic_root / "videos" / "val_04_003.mp4"
    a = open_video(path, "decord").get_frames(range(24))
    b = open_video(path, "pyav").get_frames(range(24))
    assert np.array_equal(a, b)


def test_bad_files_raise_with_path(tmp_path, synthetic_root):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        open_video(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        open_video(junk)
    with pytest.raises(VideoDecodeError, match="not found"):
        open_video(tmp_path / "nope.mp4")


# -- annotation lists -------------------------------------------------------------------------------
def test_list_paths_with_spaces_and_root(tmp_path, synthetic_root):
    src = synthetic_root / "videos" / "train_01_000.mp4"
    (tmp_path / "my videos").mkdir()
    shutil.copy(src, tmp_path / "my videos" / "a clip.mp4")
    listing = tmp_path / "train.csv"
    listing.write_text("my videos/a clip.mp4 3\n\n")
    (record,) = read_video_list(listing, data_root=tmp_path)
    assert record.path == str(tmp_path / "my videos" / "a clip.mp4") and record.label == 3
    assert record.where == f"{listing}:1"


@pytest.mark.parametrize("content, message", [
    ("a.mp4 1\nb.mp4\n", ":2: expected '<path> <label>'"),
    ("a.mp4 1\nb.mp4 cat\n", ":2: label 'cat' is not an integer"),
    ("a.mp4 1\nb.mp4 9\n", ":2: label 9 is not a known class"),
    ("a.mp4 1\nmissing.mp4 2\n", ":2: .*missing.mp4 does not exist"),
])
def test_malformed_lists_name_file_and_line(tmp_path, content, message):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    listing = tmp_path / "list.csv"
    listing.write_text(content)
    with pytest.raises(AnnotationError, match=message):
        read_video_list(listing, data_root=tmp_path, num_classes=4)


def test_rawframe_and_v2_pretrain_lists(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames" / "12"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        Image.fromarray(np.full((8, 10, 3), i * 40, np.uint8)).save(folder / f"img_{i:05}.jpg")
    listing = tmp_path / "raw.csv"
    listing.write_text("frames/12 5 7\n")
    (record,) = read_video_list(listing, tmp_path, fmt="rawframes")
    assert (record.num_frames, record.label) == (5, 7)
    ds = VideoDataset([record], "val", ClipConfig(num_frames=4, sampling="segment", img_size=8))
    assert ds[0]["video"].shape == (3, 4, 8, 8)
    v2 = tmp_path / "pre.csv"
    v2.write_text("frames/12 0 -1\n")
    assert read_video_list(v2, tmp_path, fmt="v2_pretrain")[0].label == -1


def test_missing_list_file_names_it(tmp_path):
    with pytest.raises(AnnotationError, match="annotation list not found.*nope.csv"):
        read_video_list(tmp_path / "nope.csv")


# -- samplers --------------------------------------------------------------------------------------
def test_dense_clip_indices():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = dense_clip(100, 16, 4, rng)
        assert np.all(np.diff(idx) == 4) and 0 <= idx[0] and idx[-1] < 100
    assert dense_clip(10, 16, 2, rng) == [0, 2, 4, 6, 8] + [9] * 11            # clamp
    assert dense_clip(10, 6, 2, rng, short="loop") == [0, 2, 4, 6, 8, 0]     # loop


def test_dense_test_clips_cover_the_video():
    clips = dense_test_clips(200, 16, 4, num_clips=5)
    assert clips[0][0] == 0 and clips[-1][-1] == 199  # first and last clips touch the ends
    starts = [c[0] for c in clips]
    assert starts == sorted(starts) and len(set(np.diff(starts))) <= 2
    assert dense_test_clips(200, 16, 4, num_clips=1)[0][0] == (200 - 61) // 2


def test_segment_clip_tsn():
    rng = np.random.default_rng(0)
    idx = segment_clip(64, 16, rng)
    assert all(4 * k <= i < 4 * (k + 1) for k, i in enumerate(idx))   # one frame per segment
    assert segment_clip(64, 16) == [2 + 4 * k for k in range(16)]        # centres
    two = [segment_clip(64, 16, clip_index=c, num_clips=2) for c in range(2)]
    assert two[0] == [2 + 4 * k for k in range(16)] and two[1] == [4 * k for k in range(16)]
    assert len(segment_clip(5, 16)) == 16                                  # short video


# -- transforms -----------------------------------------------------------------------------------
def moving_clip(t=8, h=60, w=80):
    """Frames that differ only by a per-frame offset, so per-frame consistency is checkable."""
    base = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return base.repeat(t, 1, 1, 1)


@pytest.mark.parametrize("transform", [
    MultiScaleCrop(32), RandomResizedCrop(32), HorizontalFlip(0.5), RandAugment("rand-m7-n4-mstd0.5-inc1", 32),
    RandomErasing(p=1.0), ThreeCrop(40, 2),
], ids=lambda t: type(t).__name__)
def test_transforms_apply_the_same_parameters_to_every_frame(transform):
    clip = moving_clip()
    for seed in range(5):
        out = transform(clip, np.random.default_rng(seed))
        assert out.dtype == torch.uint8
        if isinstance(transform, RandomErasing):
            # same box in every frame (noise differs): the changed region is identical
            box = (out != clip).any(1).any(0)
            assert box.any()
            assert (out[:, :, ~box] == clip[:, :, ~box]).all()
        else:
            assert (out == out[:1]).all(), f"seed {seed}: frames differ"


def test_random_erasing_box_is_shared():
    clip = torch.zeros(6, 3, 40, 40, dtype=torch.uint8)
    out = RandomErasing(p=1.0)(clip, np.random.default_rng(1))
    rows = (out != 0).any(1).any(-1)  # (T, H)
    cols = (out != 0).any(1).any(-2)  # (T, W)
    assert (rows == rows[:1]).all() and (cols == cols[:1]).all()
    assert not torch.equal(out[0], out[1])  # fresh noise per frame


def test_multiscale_crop_sizes():
    crop = MultiScaleCrop(224)
    rng = np.random.default_rng(0)
    sides = {crop.params(256, 340, rng)[2] for _ in range(200)}
    assert sides <= {256, 224, 192, 168} and len(sides) > 1


def test_short_side_resize_and_three_crop():
    clip = torch.zeros(2, 3, 120, 200, dtype=torch.uint8)
    clip[..., :, :66] = 10
    clip[..., :, 134:] = 200
    resized = ShortSideResize(60)(clip)
    assert resized.shape[-2:] == (60, 100)
    crops = [ThreeCrop(60, i)(resized) for i in range(3)]
    assert [c.shape[-1] for c in crops] == [60, 60, 60]
    assert crops[0].float().mean() < crops[1].float().mean() < crops[2].float().mean()
    assert eval_transform(60)(clip).shape[-2:] == (60, 60)


# -- datasets -------------------------------------------------------------------------------------
def records(root, split="train"):
    return read_video_list(root / f"{split}.csv", root)


def test_pretrain_items_and_repeated_sampling(synthetic_root):
    clip = ClipConfig(num_frames=8, sampling_rate=2, img_size=32, num_repeats=4)
    ds = VideoDataset(records(synthetic_root), "pretrain", clip)
    item = ds[0]
    assert item["video"].shape == (4, 3, 8, 32, 32) and item["video"].dtype == torch.uint8
    assert not torch.equal(item["video"][0], item["video"][1])  # independently augmented
    loader = make_loader(ds, batch_size=3, num_workers=0)
    batch = next(iter(loader))
    assert batch["video"].shape == (12, 3, 8, 32, 32)
    assert torch.equal(batch["label"].view(3, 4), batch["label"].view(3, 4)[:, :1].expand(3, 4))


def test_items_reproducible_per_epoch(synthetic_root):
    ds = VideoDataset(records(synthetic_root), "pretrain", ClipConfig(num_frames=8, img_size=32))
    a, b = ds[2]["video"], ds[2]["video"]
    ds.set_epoch(1)
    c = ds[2]["video"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_finetune_modes(synthetic_root):
    clip = ClipConfig(num_frames=8, sampling="segment", img_size=32)
    train = VideoDataset(records(synthetic_root), "train", clip)
    assert train[1]["video"].shape == (3, 8, 32, 32)
    val = VideoDataset(records(synthetic_root, "val"), "val", clip)
    assert torch.equal(val[0]["video"], val[0]["video"])


def test_multi_view_test_items(synthetic_root):
    clip = ClipConfig(num_frames=8, sampling_rate=2, img_size=32, num_clips=2, num_crops=3)
    ds = VideoDataset(records(synthetic_root, "test"), "test", clip)
    assert len(ds) == 8 * 6
    views = {(ds[i]["index"], ds[i]["clip_index"], ds[i]["crop_index"]) for i in range(12)}
    assert views == {(v, c, k) for v in (0, 1) for c in (0, 1) for k in (0, 1, 2)}
    assert not torch.equal(ds[0]["video"], ds[2]["video"])   # crops differ
    assert not torch.equal(ds[0]["video"], ds[3]["video"])   # clips differ


def corrupt_list(tmp_path, synthetic_root):
    good = synthetic_root / "videos" / "train_02_000.mp4"
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    lines = [f"{truncated} 1", f"{empty} 2"] + [f"{synthetic_root / 'videos' / f'train_{c:02d}_000.mp4'} {c}"
                                                 for c in range(8)]
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(lines) + "\n")
    return read_video_list(listing), truncated, empty


def test_bad_videos_in_training_are_replaced_and_reported_with_the_batch(tmp_path, synthetic_root):
    recs, truncated, empty = corrupt_list(tmp_path, synthetic_root)
    ds = VideoDataset(recs, "pretrain", ClipConfig(num_frames=8, img_size=32))
    items = [ds[i] for i in range(len(ds))]
    assert all(item["video"].shape == (3, 8, 32, 32) for item in items)
    assert items[0]["index"] >= 2 and items[1]["index"] >= 2   # substituted by good videos
    assert [f[0] for f in items[0]["load_failures"]][:1] == [0] and items[1]["load_failures"][0][0] == 1
    assert "truncated.mp4" in items[0]["load_failures"][0][1] and "empty" in items[1]["load_failures"][0][1]
    # through worker processes too: the counts come back with the batches
    loader = make_loader(ds, batch_size=5, num_workers=2, shuffle=False, timeout=120)
    batches = list(loader)
    assert sum(b["video"].shape[0] for b in batches) == 10
    failures = [f for b in batches for f in b["load_failures"]]
    assert {0, 1} <= {index for index, _ in failures}
    assert sum(sum(b["loads"]) for b in batches) == 10 + len(failures)


def test_too_many_bad_videos_in_a_row_stop_with_a_clear_message(tmp_path, synthetic_root):
    recs, _, _ = corrupt_list(tmp_path, synthetic_root)
    ds = VideoDataset(recs[:2] * 10, "pretrain", ClipConfig(num_frames=8, img_size=32))
    with pytest.raises(TooManyBadVideos, match="11 videos in a row failed to load.*list.csv:[12]"):
        ds[0]


def test_bad_videos_in_evaluation_raise_with_path(tmp_path, synthetic_root):
    recs, truncated, empty = corrupt_list(tmp_path, synthetic_root)
    test = VideoDataset(recs, "test", ClipConfig(num_frames=8, img_size=32))
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        test[0]
    val = VideoDataset(recs, "val", ClipConfig(num_frames=8, img_size=32))
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        val[1]


def test_loader_with_workers(synthetic_root):
    ds = VideoDataset(records(synthetic_root), "train",
                      ClipConfig(num_frames=8, sampling="segment", img_size=32, num_repeats=2))
    loader = make_loader(ds, batch_size=4, num_workers=2, timeout=120)
    batches = list(loader)
    assert len(batches) == 24 // 4
    assert all(b["video"].shape == (8, 3, 8, 32, 32) for b in batches)


def test_synthetic_dataset_layout(synthetic_root):
    classes = json.loads((synthetic_root / "classes.json").read_text())
    assert len(classes) == 8
    assert len(records(synthetic_root)) == 24 and len(records(synthetic_root, "val")) == 8
    assert (synthetic_root / "test.csv").read_text() == (synthetic_root / "val.csv").read_text()


def test_synthetic_dataset_is_reused_only_when_it_matches(tmp_path):
    from videomae.data.synthetic import make_synthetic_dataset

    small = dict(num_frames=4, height=16, width=16)
    make_synthetic_dataset(tmp_path, videos_per_class=1, val_per_class=0, **small)
    first = tmp_path / "videos" / "train_00_000.mp4"
    stamp = first.stat().st_mtime_ns
    make_synthetic_dataset(tmp_path, videos_per_class=1, val_per_class=0, **small)
    assert first.stat().st_mtime_ns == stamp  # same arguments: reused, not rewritten
    summary = make_synthetic_dataset(tmp_path, videos_per_class=2, val_per_class=0, **small)
    assert summary["train"] == 16 and len(records(tmp_path)) == 16
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 16


def test_the_log_names_the_decoder(monkeypatch):
    """The run says which library decodes: decord (and which one), or PyAV standing in for it."""
    import decord
    from videomae.data import decoding
    line = decoding.describe_backend("decord")
    assert line == f"video decoding: decord {decord.__version__}" + \
        (" (decord2)" if not decord.__version__.startswith("0.") else "")
    monkeypatch.setattr(decoding, "decord_available", lambda: False)
    assert decoding.describe_backend("decord").startswith("video decoding: decord is not installed, PyAV ")
    assert decoding.describe_backend("pyav").startswith("video decoding: PyAV ")
