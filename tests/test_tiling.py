"""Overlap-tile geometry: chunk grids, aligned tile layouts, input blocks and mirror padding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unetflow.tiling import Box, ChunkGrid, TileLayout, align_down, align_up, mirror_indices, read_window


def _padded(image: np.ndarray, pad: int) -> np.ndarray:
    """The reference: numpy's own reflect padding (edge pixel not repeated)."""
    return np.pad(image, [(0, 0), (pad, pad), (pad, pad)], mode="reflect")


@pytest.mark.parametrize(
    "y0,x0",
    [(-5, -5), (-5, 3), (-5, 12), (3, -5), (3, 12), (10, -5), (10, 3), (10, 12)],
    ids=["top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right"],
)
def test_read_window_mirrors_every_border_and_corner(y0: int, x0: int) -> None:
    image = np.arange(2 * 11 * 14, dtype=np.float32).reshape(2, 11, 14)
    pad = 8
    expected = _padded(image, pad)[:, y0 + pad : y0 + pad + 9, x0 + pad : x0 + pad + 10]
    np.testing.assert_array_equal(read_window(image, y0, x0, 9, 10), expected)


def test_read_window_larger_than_image_reflects_repeatedly() -> None:
    image = np.arange(3 * 4, dtype=np.float32).reshape(1, 3, 4)
    pad = 9  # wider than the image: numpy reflects again and again
    np.testing.assert_array_equal(read_window(image, -pad, -pad, 3 + 2 * pad, 4 + 2 * pad), _padded(image, pad))


def test_mirror_indices_of_a_single_pixel_axis_is_constant() -> None:
    assert mirror_indices(-3, 4, 1).tolist() == [0] * 7


def test_read_window_inside_returns_the_plain_slice() -> None:
    image = np.random.default_rng(0).normal(size=(1, 20, 20)).astype(np.float32)
    np.testing.assert_array_equal(read_window(image, 2, 3, 5, 6), image[:, 2:7, 3:9])


def test_align_helpers_handle_negative_values() -> None:
    assert align_down(-3, 4) == -4 and align_up(-3, 4) == 0
    assert align_down(8, 4) == 8 == align_up(8, 4)
    assert align_down(9, 4) == 8 and align_up(9, 4) == 12


def test_box_intersection_and_relative_coordinates() -> None:
    a, b = Box(0, 0, 10, 10), Box(5, -2, 10, 4)
    assert a.intersection(b) == Box(5, 0, 5, 2)
    assert a.intersection(Box(10, 0, 3, 3)) is None
    assert Box(7, 9, 2, 3).relative_to(Box(5, 5, 10, 10)) == Box(2, 4, 2, 3)
    assert Box(4, 4, 2, 2).grown(3) == Box(1, 1, 8, 8)


def test_chunk_grid_tiles_the_image_exactly_once() -> None:
    grid = ChunkGrid(130, 70, 64)
    assert grid.shape == (3, 2) and len(grid) == 6
    cover = np.zeros((130, 70), dtype=int)
    for _, box in grid:
        cover[box.slices] += 1
    assert (cover == 1).all()
    assert grid.box(2, 1) == Box(128, 64, 2, 6)
    assert grid.halved() == ChunkGrid(65, 35, 64)


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(-50, 300),
    length=st.integers(1, 300),
    exponent=st.integers(0, 5),
    extra=st.integers(0, 40),
)
def test_tile_origins_are_aligned_and_cover_the_range(start: int, length: int, exponent: int, extra: int) -> None:
    align = 2**exponent
    layout = TileLayout(tile=align + extra, margin=3, align=align)
    stop = start + length
    origins = layout.origins(start, stop)
    assert all(o % align == 0 for o in origins)
    assert origins == sorted(set(origins))
    assert origins[0] <= start and origins[-1] + layout.tile >= stop
    # no gaps between consecutive tiles, and tiles overshoot the range by less than the alignment
    # (a single tile longer than the range overshoots by its excess length instead)
    assert all(b - a <= layout.tile for a, b in zip(origins, origins[1:]))
    assert start - origins[0] < align
    if len(origins) > 1:
        assert origins[-1] + layout.tile - stop < align


def test_tiles_windows_and_block_of_a_region() -> None:
    layout = TileLayout(tile=20, margin=8, align=4)  # step 20, windows of 36
    region = Box(64, 64, 64, 50)
    tiles = layout.tiles(region)
    covered = np.zeros((200, 200), dtype=bool)
    for tile in tiles:
        covered[tile.slices] = True
        window = layout.window(tile)
        assert window.height == layout.input_size == 36
        block = layout.block(region)
        assert block.intersection(window) == window  # every window lies inside the input block
    assert covered[region.slices].all()
    block = layout.block(region)
    # the halo is the margin plus less than one alignment cell of overshoot
    assert block.y0 == region.y0 - 8 and block.y1 - region.y1 < 8 + 4
    assert block.x0 == region.x0 - 8 and block.x1 - region.x1 < 8 + 4


def test_tile_layout_rejects_tiles_smaller_than_the_alignment() -> None:
    with pytest.raises(ValueError):
        TileLayout(tile=4, margin=0, align=8)
