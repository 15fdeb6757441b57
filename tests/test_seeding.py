"""The seeding protocol: per-row random numbers from (SEED, step, global row, stream)."""
import numpy as np
import pytest
import torch

from helpers import losses, run_train
from videomae.engine.data import GlobalBatchSampler
from videomae.engine.tasks import StepContext
from videomae.seeding import RowGenerator, hash32, scalar_seed, seed_global_rngs


def test_hash_is_a_bijection_and_the_same_on_ints_and_tensors():
    x = torch.arange(0, 1 << 20, dtype=torch.int64) * 4099 + 12345
    h = hash32(x)
    assert h.unique().numel() == x.numel() and 0 <= int(h.min()) and int(h.max()) < 2**32
    assert [hash32(int(v)) for v in x[:50]] == h[:50].tolist()


def test_a_rows_numbers_depend_on_that_row_only():
    together = RowGenerator.for_range(7, 3, 0, 8, "mask")
    a, b = together.uniform(5), together.uniform(3)        # the counter continues across calls
    for first in (0, 4):
        part = RowGenerator.for_range(7, 3, first, 4, "mask")
        assert torch.equal(part.uniform(5), a[first:first + 4]) and torch.equal(part.uniform(3), b[first:first + 4])
    scattered = RowGenerator(7, 3, [6, 1], "mask").uniform(5)
    assert torch.equal(scattered, a[[6, 1]])


@pytest.mark.parametrize("change", [dict(seed=8), dict(step=4), dict(stream="drop_path")])
def test_seed_step_and_stream_each_change_the_numbers(change):
    args = dict(seed=7, step=3, stream="mask")
    base = RowGenerator.for_range(args["seed"], args["step"], 0, 4, args["stream"]).uniform(64)
    args.update(change)
    other = RowGenerator.for_range(args["seed"], args["step"], 0, 4, args["stream"]).uniform(64)
    assert (base != other).float().mean() > 0.99


def test_uniform_is_uniform():
    u = RowGenerator.for_range(0, 0, 0, 4096).uniform(64).flatten()
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50  # 15 degrees of freedom: p < 1e-5 above this
    assert 0 <= float(u.min()) and float(u.max()) < 1
    ints = RowGenerator.for_range(0, 0, 0, 1000).integers(2, 5, 10)
    assert set(ints.unique().tolist()) == {2, 3, 4, 5}


def test_step_context_rows_are_the_samplers_rows():
    """micro-step m of rank r takes chunk m * world + r of the global batch: rows chunk * B ..."""
    batch, world, accum = 3, 2, 2
    order = np.random.default_rng([5, 0]).permutation(24)
    for rank in range(world):
        sampler = GlobalBatchSampler(24, batch, world, rank, accum, seed=5, epochs=1)
        for i, items in enumerate(sampler):
            step, micro = divmod(i, accum)
            ctx = StepContext(step, micro, rank, world, accum, seed=5)
            first = ctx.first_row(batch)
            assert [key.index for key in items] == order[step * 12 + first: step * 12 + first + batch].tolist()


def test_global_generators_seeded_per_micro_batch():
    seed_global_rngs(1, 2, 8)
    a = (torch.rand(3), np.random.rand(3))
    seed_global_rngs(1, 2, 8)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len({scalar_seed(s, t, r) for s in range(20) for t in range(20) for r in range(20)}) == 8000


@pytest.mark.slow
def test_drop_path_same_losses_on_one_rank_with_accumulation_and_on_two_ranks(tmp_path, synthetic_root):
    common = ["TRAIN.BATCH_SIZE", 2, "MODEL.DROP_PATH", 0.5, "TRAIN.MAX_STEPS", 2]
    run_train(tmp_path / "accum", synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2)
    run_train(tmp_path / "ranks", synthetic_root, *common, nproc=2)
    run_train(tmp_path / "no_drop", synthetic_root, *common, "TRAIN.ACCUM_STEPS", 2, "MODEL.DROP_PATH", 0)
    accum, ranks = losses(tmp_path / "accum"), losses(tmp_path / "ranks")
    assert len(accum) == 2
    torch.testing.assert_close(torch.tensor(ranks), torch.tensor(accum), rtol=1e-5, atol=1e-6)
    assert losses(tmp_path / "no_drop")[0] != pytest.approx(accum[0], rel=1e-4)   # drop path is active
