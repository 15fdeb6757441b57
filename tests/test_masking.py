import math

import pytest
import torch

from videomae.masking import MASKING_REGISTRY, MaskingStrategy, build_masking, register_masking

GRID = (8, 14, 14)
CASES = [("tube", 0.9, 1408), ("random", 0.9, 1411), ("frame", 0.875, 7 * 196),
         ("frame", 0.9, 7 * 196), ("block", 0.9, 1411), ("running_cell", 0.5, 784)]


@pytest.mark.parametrize("name, ratio, expected", CASES)
def test_every_strategy_masks_the_documented_count(name, ratio, expected):
    strategy = build_masking(name, ratio)
    mask = strategy(6, GRID, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (6, math.prod(GRID))
    assert mask.sum(1).tolist() == [expected] * 6
    assert strategy.num_masked(GRID) == expected


@pytest.mark.parametrize("name, ratio, _", CASES)
def test_reproducible_from_seed_and_varied_across_samples(name, ratio, _):
    strategy = build_masking(name, ratio)
    a = strategy(8, GRID, generator=torch.Generator().manual_seed(3))
    b = strategy(8, GRID, generator=torch.Generator().manual_seed(3))
    c = strategy(8, GRID, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) > 1  # not one pattern for the whole batch


def test_tube_repeats_one_spatial_pattern():
    mask = build_masking("tube", 0.9)(4, GRID, generator=torch.Generator().manual_seed(0))
    per_slice = mask.view(4, 8, 196)
    assert (per_slice == per_slice[:, :1]).all()
    assert per_slice.sum(-1).unique().tolist() == [176]


def test_frame_masks_whole_slices():
    mask = build_masking("frame", 0.875)(4, GRID, generator=torch.Generator().manual_seed(0))
    per_slice = mask.view(4, 8, 196)
    assert ((per_slice.all(-1)) | (~per_slice.any(-1))).all()
    assert per_slice.all(-1).sum(1).tolist() == [7] * 4


def test_random_is_not_tube():
    mask = build_masking("random", 0.9)(4, GRID, generator=torch.Generator().manual_seed(0)).view(4, 8, 196)
    assert not (mask == mask[:, :1]).all()
    # roughly uniform over time: every slice holds some masked cubes
    assert (mask.sum(-1) > 100).all()


def test_running_cell_pattern():
    strategy = build_masking("running_cell", 0.5)
    mask = strategy(4, GRID, generator=torch.Generator().manual_seed(0)).view(4, 8, 14, 14)
    # every 2x2 cell masks 2 positions in every slice, and the pattern shifts slice to slice
    cells = mask.unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
    assert (cells == 2).all()
    assert (mask[:, 1:] != mask[:, :-1]).any(-1).any(-1).all()
    # tiled: every cell of a slice is identical
    assert (mask[..., 2:, :] == mask[..., :-2, :]).all() and (mask[..., 2:] == mask[..., :-2]).all()
    # the pattern period is 4 slices
    assert torch.equal(mask[:, 4:], mask[:, :4])
    with pytest.raises(ValueError, match="even spatial grid"):
        strategy(1, (2, 7, 7))


def test_block_masks_are_spatially_clustered():
    mask = build_masking("block", 0.5)(4, GRID, generator=torch.Generator().manual_seed(0)).view(4, 8, 14, 14)
    rand = build_masking("random", 0.5)(4, GRID, generator=torch.Generator().manual_seed(0)).view(4, 8, 14, 14)

    def same_as_right_neighbour(m):
        return (m[..., 1:] == m[..., :-1]).float().mean()

    assert same_as_right_neighbour(mask) > same_as_right_neighbour(rand) + 0.2


def test_masks_are_made_on_the_requested_device():
    mask = build_masking("tube", 0.9)(2, GRID, device="cpu", generator=torch.Generator().manual_seed(0))
    assert mask.device.type == "cpu"


def test_user_strategy_by_name():
    @register_masking("checkerboard_test")
    class Checkerboard(MaskingStrategy):
        def num_masked(self, grid):
            return math.prod(grid) // 2

        def make(self, batch_size, grid, device, generator):
            idx = torch.arange(math.prod(grid), device=device)
            return (idx % 2 == 0).expand(batch_size, -1).clone()

    try:
        mask = build_masking("checkerboard_test", 0.5)(3, (2, 2, 2))
        assert mask.sum(1).tolist() == [4, 4, 4]
    finally:
        MASKING_REGISTRY.pop("checkerboard_test")


def test_bad_names_and_ratios():
    with pytest.raises(ValueError, match="unknown masking strategy 'tubes'"):
        build_masking("tubes")
    with pytest.raises(ValueError, match="mask ratio"):
        build_masking("tube", 1.0)
    with pytest.raises(ValueError, match="1-3 of 4"):
        build_masking("running_cell", 0.1)
