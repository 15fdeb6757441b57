"""`running_cell` equals VideoMAE V2's running-cell decoder maps, every phase and ratio."""
import numpy as np
import pytest
import torch

from videomae.masking import build_masking
from videomae.seeding import RowGenerator


def v2_maps(grid, ratio):
    """(4, T'*H'*W') 0/1: VideoMAE V2's maps, one per starting pointer, re-derived from its definition:
    a ring of `int(4 * ratio)` ones then zeros; the pointer advances by one before each temporal
    slice; the 2x2 cell reads the ring from the pointer on, in raster order, and is tiled."""
    t, h, w = grid
    k = int(4 * ratio)
    ring = np.array([1] * k + [0] * (4 - k))
    maps = []
    for start in range(4):
        pointer, slices = start, []
        for _ in range(t):
            pointer += 1
            cell = np.roll(ring, -pointer).reshape(2, 2)       # ring[(j + pointer) % 4] at raster j
            slices.append(np.tile(cell, (h // 2, w // 2)).ravel())
        maps.append(np.concatenate(slices))
    return np.stack(maps)


def test_the_published_table_ratio_half_phase_zero():
    """Per slice, in raster order over the 2x2 cell (VideoMAE V2, ratio 0.5, phase 0)."""
    table = [[1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]]
    ours = build_masking("running_cell", 0.5).patterns((4, 2, 2))[0].view(4, 4)
    assert ours.int().tolist() == table
    assert v2_maps((4, 2, 2), 0.5)[0].reshape(4, 4).tolist() == table  # the reference agrees too


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("grid", [(1, 2, 2), (5, 2, 4), (8, 14, 14)])
def test_every_phase_equals_v2(ratio, grid):
    strategy = build_masking("running_cell", ratio)
    ours = strategy.patterns(grid)
    assert torch.equal(ours, torch.from_numpy(v2_maps(grid, ratio)).bool())
    assert ours.sum(1).tolist() == [strategy.num_masked(grid)] * 4


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_drawn_rows_are_v2_maps_and_every_phase_occurs(ratio):
    grid = (4, 4, 6)
    strategy = build_masking("running_cell", ratio)
    mask = strategy.draw_rows(RowGenerator.for_range(5, 0, 0, 64, "mask"), grid)
    reference = torch.from_numpy(v2_maps(grid, ratio)).bool()
    phase = (mask[:, None] == reference[None]).all(-1).int().argmax(1)
    assert torch.equal(reference[phase], mask)                       # every row is one of V2's maps
    assert sorted(set(phase.tolist())) == [0, 1, 2, 3]               # and each phase is drawn
    assert mask.sum(1).tolist() == [strategy.num_masked(grid)] * 64
