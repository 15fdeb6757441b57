"""Motion-guided masking (MASK.TYPE motion): masks drawn in the loader from codec motion vectors
(PyAV) or frame differences (decord), per the seeding protocol."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import losses, run_train
from videomae.data import ClipConfig, VideoDataset
from videomae.data.annotations import VideoRecord
from videomae.data.synthetic import write_mp4
from videomae.data.transforms import Compose, HorizontalFlip, MultiScaleCrop, resize
from videomae.engine.data import GlobalBatchSampler
from videomae.masking import build_masking
from videomae.masking.motion import (LoaderMotionMasks, MotionMasking, average_ranks, frame_difference_scores,
                                    motion_vector_map)
from videomae.seeding import RowGenerator

SIZE, FRAMES, TUBELET, PATCH, RATIO = 64, 8, 2, 8, 0.25
GRID = (FRAMES // TUBELET, SIZE // PATCH, SIZE // PATCH)   # 4 x 8 x 8 = 256 cubes


@pytest.fixture(scope="module")
def square_video(tmp_path_factory):
    """A bright square moving 4 px per frame over a static, blocky texture (no white in it)."""
    rng = np.random.default_rng(0)
    texture = rng.integers(20, 200, (12, 16, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)   # 96 x 128
    frames = []
    for t in range(16):
        frame = texture.copy()
        x = 8 + 5 * t
        frame[32:56, x:x + 24] = 255
        frames.append(frame)
    path = tmp_path_factory.mktemp("motion") / "square.mp4"
    write_mp4(path, np.stack(frames), keyint=16)
    return path


class Resize:
    """A fixed mapping (so the square's cubes are known): the whole frame resized to SIZE."""

    def __call__(self, frames, rng=None):
        return resize(frames, (SIZE, SIZE))


def dataset(path, backend, transform=None, temperature=0.25, repeats=1, tube=False, seed=0, items=1):
    motion = LoaderMotionMasks(MotionMasking(RATIO, temperature, tube), TUBELET, PATCH, seed,
                               steps_per_epoch=100)
    clip = ClipConfig(num_frames=FRAMES, sampling_rate=1, img_size=SIZE, num_repeats=repeats)
    records = [VideoRecord(str(path), 0)] * items
    return VideoDataset(records, "pretrain", clip, transform=transform or Resize(), backend=backend, seed=seed,
                        motion=motion)


def square_cubes(video: torch.Tensor) -> torch.Tensor:
    """(C, T, H, W) uint8 -> (N,) bool: cubes with a pixel of the (white) square in any frame."""
    white = (video >= 240).all(dim=0).float()[None, None]
    return F.max_pool3d(white, (TUBELET, PATCH, PATCH)).flatten().bool()


def share_on_square(data, draws: int):
    """Share of the square's cubes masked, over `draws` items (different steps and rows)."""
    masked = total = 0
    for i in range(draws):
        item = data[(0, i, i % 7, 0)]
        videos = item["video"] if item["video"].ndim == 5 else item["video"][None]
        masks = item["mask"] if item["mask"].ndim == 2 else item["mask"][None]
        for video, mask in zip(videos, masks):
            square = square_cubes(video)
            assert 0 < square.sum() < 0.5 * square.numel()
            assert int(mask.sum()) == int(RATIO * mask.numel())
            masked += int(mask[square].sum())
            total += int(square.sum())
    return masked / total, item


@pytest.mark.parametrize("backend,source", [("pyav", "mv"), ("decord", "diff")])
def test_moving_square_is_masked_at_least_twice_as_often_as_at_random(square_video, backend, source):
    share, item = share_on_square(dataset(square_video, backend), draws=12)
    assert item["motion_source"] == source
    assert share >= 2 * RATIO, share


def test_motion_vectors_are_where_the_square_moves(square_video):
    from videomae.data.decoding import PyAVReader

    with PyAVReader(str(square_video)) as reader:
        frames, motion = reader.get_frames_and_motion([3, 4, 5])
    assert motion.shape == frames.shape[:3] and motion.dtype == np.float32
    on = (frames >= 240).all(-1)
    assert motion[on].mean() > 5 * max(motion[~on].mean(), 0.1)


def test_very_large_temperature_is_random_masking(square_video):
    share, _ = share_on_square(dataset(square_video, "decord", temperature=1e6), draws=60)
    assert abs(share - RATIO) < 0.05, share


def test_same_seed_same_masks_and_steps_differ(square_video):
    a, b = dataset(square_video, "decord"), dataset(square_video, "decord")
    assert torch.equal(a[(0, 3, 5, 0)]["mask"], b[(0, 3, 5, 0)]["mask"])
    assert not torch.equal(a[(0, 3, 5, 0)]["mask"], a[(0, 4, 5, 0)]["mask"])
    other = dataset(square_video, "decord", seed=1)
    assert not torch.equal(a[(0, 3, 5, 0)]["mask"], other[(0, 3, 5, 0)]["mask"])


def test_masks_do_not_depend_on_the_world_size(square_video):
    """Rows 2..3 of step 1: rank 0 of 1 (batch 4) and rank 1 of 2 (batch 2) draw the same masks, K=2."""
    data = dataset(square_video, "decord", repeats=2, items=8)
    one = GlobalBatchSampler(8, 4, world=1, rank=0, accum=1, seed=0).micro_batch(0, 1, 0)
    two = GlobalBatchSampler(8, 2, world=2, rank=1, accum=1, seed=0).micro_batch(0, 1, 0)
    assert [k.row for k in one[2:]] == [k.row for k in two] == [2, 3]
    for key_one, key_two in zip(one[2:], two):
        assert torch.equal(data[key_one]["mask"], data[key_two]["mask"])


def test_loader_masks_use_the_rows_the_training_step_counts(square_video):
    """Item row r with K clips: clip k is row r*K + k of the step's noise; with equal scores the
    rule is the strategy's own draw for those rows."""
    strategy = MotionMasking(RATIO, 0.25)
    motion = LoaderMotionMasks(strategy, TUBELET, PATCH, seed=7, steps_per_epoch=10)
    scores = torch.zeros(3, 256)
    loaded = motion.masks(scores, GRID, epoch=2, step=4, row=5)
    drawn = strategy.draw_rows(RowGenerator.for_range(7, 24, 15, 3, "mask"), GRID)
    assert torch.equal(loaded, drawn)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_repeated_clips_get_masks_that_follow_their_own_crops(square_video, backend):
    """K=4 crops and flips of one decode; with motion vectors the map replays each clip's transform."""
    transform = Compose([MultiScaleCrop(SIZE), HorizontalFlip()])
    data = dataset(square_video, backend, transform=transform, repeats=4, temperature=0.0)
    flips = set()
    for i in range(3):
        item = data[(0, i, 0, 0)]
        assert item["video"].shape[0] == item["mask"].shape[0] == 4
        assert item["motion_source"] == {"pyav": "mv", "decord": "diff"}[backend]
        for video, mask in zip(item["video"], item["mask"]):
            square = square_cubes(video)
            # temperature 0: the masked cubes are the most moving ones of this very crop
            assert mask[square].float().mean() >= 2 * RATIO
            flips.add(bool(square.view(GRID)[..., : GRID[2] // 2].sum() > square.view(GRID)[..., GRID[2] // 2:].sum()))
        assert len({m.numpy().tobytes() for m in item["mask"]}) > 1
    # the square moves right from the left: flipped crops have it on the other side
    assert flips == {True, False}


def test_rule_units():
    # ties share their mean rank (0 and 1 -> 0.5), over N - 1 = 3
    torch.testing.assert_close(average_ranks(torch.tensor([[3.0, 1.0, 1.0, 2.0]])),
                               torch.tensor([[1.0, 1 / 6, 1 / 6, 2 / 3]]))
    strategy = build_masking("motion", 0.5, temperature=0.0, tube=True)
    scores = torch.zeros(1, 2, 2, 2)
    scores[0, :, 0, 1] = 5.0
    scores[0, 1, 1, 1] = 1.0
    gen = RowGenerator.for_range(0, 0, 0, 1)
    mask = strategy.from_scores(scores.flatten(1), gen, (2, 2, 2)).view(2, 2, 2)
    assert mask[:, 0, 1].all() and mask[:, 1, 1].all() and not mask[:, :, 0].any()
    assert strategy.num_masked((2, 2, 2)) == 4 and build_masking("motion", 0.9).num_masked((8, 14, 14)) == 1411


def test_motion_pretraining_lowers_the_loss(tmp_path, synthetic_root):
    """tools/train.py with MASK.TYPE motion on PyAV (motion vectors), 2 repeated clips per video."""
    out = tmp_path / "run"
    result = run_train(out, synthetic_root, "MASK.TYPE", "motion", "MASK.RATIO", "0.75", "TRAIN.MAX_STEPS", 10,
                       "TRAIN.EPOCHS", 10, "DATA.NUM_REPEATS", 2, "DATA.BACKEND", "pyav")
    assert "motion masks: 4 of 4 videos of the first batch scored by codec motion vectors, 0 by frame " \
           "differences" in result.stdout, result.stdout
    values = losses(out)
    assert len(values) == 10 and sum(values[-3:]) / 3 < sum(values[:3]) / 3, values


def test_evaluation_scores_motion_masks_by_the_validation_clips_frame_differences(square_video):
    """recon_own of a motion cell (videomae/compare/evaluate.py): the val clip's own motion, the
    common per-item keys; the masked share counts tube-like masks as tube masking does."""
    from types import SimpleNamespace

    from videomae.compare.evaluate import masked_share
    from videomae.engine.reconstruction import item_masks

    video = dataset(square_video, "decord")[(0, 0, 0, 0)]["video"][None].repeat(3, 1, 1, 1, 1)
    strategy = MotionMasking(RATIO, 0.25)
    model = SimpleNamespace(tubelet_size=TUBELET, patch_size=PATCH)
    masks = item_masks(strategy, torch.tensor([4, 5, 6]), GRID, "cpu", video, model)
    square = square_cubes(video[0])
    assert masks[:, square].float().mean() >= 2 * RATIO
    assert torch.equal(masks[1:2], item_masks(strategy, torch.tensor([5]), GRID, "cpu", video[:1], model))
    assert not torch.equal(masks[0], masks[1])   # per-item keys (COMMON_MASK_SEED, item)
    assert masked_share("motion", 0.9, (8, 14, 14), 4, {"tube": True}) == int(0.9 * 196) / 196
    assert masked_share("motion", 0.9, (8, 14, 14), 4) == int(0.9 * 1568) / 1568


@pytest.mark.slow
def test_comparison_runner_takes_motion_as_one_more_strategy(tmp_path, synthetic_root):
    import csv
    import subprocess

    from helpers import PYTHON, ROOT, TINY, env

    out = tmp_path / "compare"
    args = ["tools/compare_masking.py", "--config", "configs/demo/pretrain.yaml", "--strategies", "random,motion",
            "--seeds", "0", "--ratios", "0.75", "--eval", "recon", "--out", str(out), "DATA.ROOT", str(synthetic_root),
            "DATA.LIST_DIR", str(synthetic_root), *TINY, "TRAIN.EPOCHS", "1"]
    result = subprocess.run([PYTHON, *args], cwd=ROOT, capture_output=True, text=True, env=env(), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(out / "results.csv") as handle:
        rows = {(r["strategy"], r["metric"]): r for r in csv.DictReader(handle)}
    assert float(rows[("motion", "recon_own")]["effective_masked_share"]) == 24 / 32
    # the motion cell's own masks follow the validation clips' motion: not the common random ones
    assert rows[("motion", "recon_own")]["value"] != rows[("motion", "recon_common")]["value"]
    assert rows[("random", "recon_own")]["value"] == rows[("random", "recon_common")]["value"]


def test_motion_vector_map_paints_each_block_with_its_magnitude():
    dtype = [("w", "u1"), ("h", "u1"), ("dst_x", "i2"), ("dst_y", "i2"), ("motion_x", "i4"), ("motion_y", "i4"),
             ("motion_scale", "u2")]
    vectors = np.array([(16, 16, 8, 8, 12, 16, 4),      # block at (0..16, 0..16): |(3, 4)| = 5 px
                        (8, 8, 20, 4, 0, 0, 4),         # a static block: stays 0
                        (8, 8, 20, 4, -8, 0, 4),        # the same block from the other reference: 2 px
                        (16, 8, 28, 28, 0, 40, 4)], dtype=dtype)   # crosses the right edge: clipped
    out = motion_vector_map(vectors, 30, 30)
    expected = np.zeros((30, 30), np.float32)
    expected[0:16, 0:16] = 5
    expected[0:8, 16:24] = 2
    expected[24:30, 20:30] = 10
    np.testing.assert_array_equal(out, expected)
    assert not motion_vector_map(vectors[:0], 30, 30).any()


def test_frame_difference_scores_are_the_mean_absolute_difference_per_cube():
    clip = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8).permute(0, 3, 1, 2)   # channels-last, as decoded
    x = clip.float()
    diff = (x[1:] - x[:-1]).abs()
    diff = torch.cat([diff[:1], diff])                       # frame 0 against frame 1
    expected = diff.view(2, 2, 3, 2, 4, 2, 4).mean(dim=(1, 2, 4, 6)).flatten()
    torch.testing.assert_close(frame_difference_scores(clip, 2, 4), expected)


def test_bad_motion_settings_are_one_clear_line():
    from videomae.engine.config import ConfigError, get_defaults
    from videomae.engine.data import loader_motion_masks

    cfg = get_defaults()
    cfg.MASK.TYPE, cfg.MASK.MOTION_SOURCE = "motion", "mv"
    with pytest.raises(ConfigError, match="MASK.MOTION_SOURCE mv needs DATA.BACKEND pyav"):
        loader_motion_masks(cfg)
    cfg.MASK.MOTION_SOURCE = "flow"
    with pytest.raises(ValueError, match="MASK.MOTION_SOURCE must be one of"):
        loader_motion_masks(cfg)
    cfg.MASK.MOTION_SOURCE, cfg.MASK.MOTION_TEMPERATURE = "auto", -1.0
    with pytest.raises(ValueError, match="MASK.MOTION_TEMPERATURE must be >= 0"):
        loader_motion_masks(cfg)
    cfg.MASK.MOTION_TEMPERATURE = 0.25
    motion = loader_motion_masks(cfg)
    assert (motion.patch, motion.tubelet, motion.strategy.temperature) == (16, 2, 0.25)


@pytest.mark.slow
def test_two_ranks_train_as_one_rank_with_accumulation(tmp_path, synthetic_root):
    """The masks the loaders draw depend on (SEED, step, row) only: 2 gloo ranks (with a loader
    worker each) give the losses of 1 process with 2 accumulation steps, across an epoch boundary."""
    reference, two = tmp_path / "reference", tmp_path / "two"
    common = ["MASK.TYPE", "motion", "MASK.RATIO", "0.75", "DATA.NUM_REPEATS", 2, "TRAIN.BATCH_SIZE", 2,
              "DEEPSPEED.ZERO_STAGE", 0, "TRAIN.MAX_STEPS", 8]
    run_train(reference, synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2)
    run_train(two, synthetic_root, *common, "DATA.NUM_WORKERS", 1, nproc=2)
    assert len(losses(reference)) == 8
    torch.testing.assert_close(torch.tensor(losses(two)), torch.tensor(losses(reference)), rtol=1e-5, atol=1e-6)
