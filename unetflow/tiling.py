"""Overlap-tile geometry and mirror-padded window reads (no model, no dask).

The U-Net paper predicts a tile of valid output from an input window that adds the network's
context margin on every side; where that window leaves the image the missing context is
mirrored. ``read_window`` is the one place that mirroring happens, for training samples and for
inference alike, so both see the same border context.

The geometry of inference over a giant image is three plain value objects: a ``ChunkGrid`` of
output chunks (the unit of work and of storage), the ``TileLayout`` of network tiles inside a
chunk, and ``Box`` rectangles for tiles, their input windows and each chunk's input block with
halo. They hold integers only, so they are cheap to test exhaustively and to ship to workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def mirror_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Indices into an axis of length ``size`` for positions ``start..stop-1``, mirrored at borders.

    Mirroring excludes the edge pixel (numpy's ``reflect`` mode: -1 -> 1, size -> size - 2) and
    repeats with period ``2 (size - 1)``, so windows wider than the image are still defined.
    """
    positions = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(positions)
    period = 2 * (size - 1)
    folded = np.mod(positions, period)
    return np.where(folded < size, folded, period - folded)


def read_window(array: Any, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Read ``array[..., y0:y0+height, x0:x0+width]`` with mirror padding outside the image.

    ``array`` is anything sliceable with numpy semantics (numpy, zarr, tifffile's zarr store);
    only the bounding box of the needed in-image pixels is read, so a window on a giant zarr
    slide touches just the chunks under it.
    """
    size_y, size_x = array.shape[-2], array.shape[-1]
    iy = mirror_indices(y0, y0 + height, size_y)
    ix = mirror_indices(x0, x0 + width, size_x)
    ylo, yhi = int(iy.min()), int(iy.max()) + 1
    xlo, xhi = int(ix.min()), int(ix.max()) + 1
    block = np.asarray(array[..., ylo:yhi, xlo:xhi])
    if ylo == y0 and yhi == y0 + height and xlo == x0 and xhi == x0 + width:
        return block
    return block[..., iy - ylo, :][..., ix - xlo]


def align_down(value: int, step: int) -> int:
    """Largest multiple of ``step`` that is <= ``value`` (works for negative values)."""
    return (value // step) * step


def align_up(value: int, step: int) -> int:
    """Smallest multiple of ``step`` that is >= ``value``."""
    return -((-value) // step) * step


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle ``[y0, y0 + height) x [x0, x0 + width)`` in pixel coordinates.

    Coordinates may be negative or run past the image: input windows of border tiles do, and
    ``read_window`` fills those parts by mirroring.
    """

    y0: int
    x0: int
    height: int
    width: int

    @property
    def y1(self) -> int:
        return self.y0 + self.height

    @property
    def x1(self) -> int:
        return self.x0 + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice_y, slice_x)`` for indexing the last two axes of an array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def relative_to(self, outer: Box) -> Box:
        """This box in the coordinates of ``outer`` (whose origin becomes (0, 0))."""
        return Box(self.y0 - outer.y0, self.x0 - outer.x0, self.height, self.width)

    def intersection(self, other: Box) -> Box | None:
        """The overlap of two boxes, or None when they do not overlap."""
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        y1, x1 = min(self.y1, other.y1), min(self.x1, other.x1)
        if y1 <= y0 or x1 <= x0:
            return None
        return Box(y0, x0, y1 - y0, x1 - x0)

    def grown(self, margin: int) -> Box:
        """The box enlarged by ``margin`` pixels on every side."""
        return Box(self.y0 - margin, self.x0 - margin, self.height + 2 * margin, self.width + 2 * margin)


def chunks_under(region: Box, shape: Sequence[int], chunks: Sequence[int]) -> list[Box]:
    """The stored chunks of an array (chunking ``chunks`` of its last two axes, edge chunks clipped
    to ``shape``) that ``region`` overlaps, row by row."""
    (cy, cx), (h, w) = chunks[-2:], shape[-2:]
    return [
        Box(y, x, min(cy, h - y), min(cx, w - x))
        for y in range(region.y0 // cy * cy, region.y1, cy)
        for x in range(region.x0 // cx * cx, region.x1, cx)
    ]


def assemble(region: Box, parts: Sequence[tuple[Box, np.ndarray]]) -> np.ndarray:
    """``region`` cut from the chunks covering it (``chunks_under``): ``parts`` are (chunk box, its
    data with every leading axis). Always a new array."""
    first = parts[0][1]
    out = np.empty((*first.shape[:-2], region.height, region.width), dtype=first.dtype)
    for box, data in parts:
        part = box.intersection(region)
        assert part is not None  # only chunks under the region are given
        out[(..., *part.relative_to(region).slices)] = data[(..., *part.relative_to(box).slices)]
    return out


@dataclass(frozen=True)
class ChunkGrid:
    """The regular grid of ``chunk`` x ``chunk`` blocks over a ``height`` x ``width`` image.

    It is both the zarr chunking of an output array and the unit of dask work: one task per
    chunk writes exactly one zarr chunk, so concurrent tasks never touch the same stored object.
    Edge chunks are clipped to the image.
    """

    height: int
    width: int
    chunk: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.chunk < 1:
            raise ValueError(f"need a positive image and chunk size, got {self}")

    @property
    def shape(self) -> tuple[int, int]:
        """Number of chunks along (y, x)."""
        return -(-self.height // self.chunk), -(-self.width // self.chunk)

    def __len__(self) -> int:
        ny, nx = self.shape
        return ny * nx

    def box(self, iy: int, ix: int) -> Box:
        """The image region of chunk ``(iy, ix)``."""
        y0, x0 = iy * self.chunk, ix * self.chunk
        return Box(y0, x0, min(self.chunk, self.height - y0), min(self.chunk, self.width - x0))

    def __iter__(self) -> Iterator[tuple[tuple[int, int], Box]]:
        """``((iy, ix), box)`` for every chunk in row-major order."""
        ny, nx = self.shape
        for iy in range(ny):
            for ix in range(nx):
                yield (iy, ix), self.box(iy, ix)

    def halved(self) -> ChunkGrid:
        """The grid of the next pyramid level: image edges halved (rounded up), same chunk edge."""
        return ChunkGrid(-(-self.height // 2), -(-self.width // 2), self.chunk)


@dataclass(frozen=True)
class TileLayout:
    """Overlap-tile geometry of a network: output tile edge, context margin and tile alignment.

    ``tile`` is an output edge the network can produce and ``margin`` the context it needs on
    every side, so a tile's input window is the tile grown by ``margin``. Tile origins are kept
    at multiples of ``align`` (2**(depth-1), the total pooling stride): a U-Net is translation
    equivariant only for shifts by whole pooling cells, so aligned tiles see exactly the pooling
    grid that whole-image inference would, and stitching by cropping reproduces it exactly.
    Neighbouring tiles therefore advance by ``step`` (the tile edge rounded down to the alignment)
    and overlap by ``tile - step`` < ``align`` pixels.
    """

    tile: int
    margin: int
    align: int

    def __post_init__(self) -> None:
        if self.align < 1 or self.margin < 0 or self.tile < self.align:
            raise ValueError(f"need align >= 1, margin >= 0 and tile >= align, got {self}")

    @property
    def step(self) -> int:
        """Distance between neighbouring tile origins."""
        return align_down(self.tile, self.align)

    @property
    def input_size(self) -> int:
        """Edge of a tile's input window."""
        return self.tile + 2 * self.margin

    def origins(self, start: int, stop: int) -> list[int]:
        """Aligned tile origins along one axis whose tiles cover ``[start, stop)``.

        The first origin is ``start`` rounded down to the alignment; the last tile is pulled back
        to the smallest aligned origin that still reaches ``stop``, so tiles overshoot the region
        by less than ``align`` pixels instead of up to a whole tile.
        """
        if stop <= start:
            raise ValueError(f"empty range [{start}, {stop})")
        first = align_down(start, self.align)
        found = []
        origin = first
        while origin + self.tile < stop:
            found.append(origin)
            origin += self.step
        found.append(max(first, align_up(stop - self.tile, self.align)))
        return found

    def tiles(self, region: Box) -> list[Box]:
        """Output tiles (row-major) whose union covers ``region``."""
        ys = self.origins(region.y0, region.y1)
        xs = self.origins(region.x0, region.x1)
        return [Box(y, x, self.tile, self.tile) for y in ys for x in xs]

    def window(self, tile: Box) -> Box:
        """The input window of an output tile: the tile plus the context margin on every side."""
        return tile.grown(self.margin)

    def block(self, region: Box) -> Box:
        """The input block (region plus halo) holding the windows of all tiles of ``region``."""
        tiles = self.tiles(region)
        first, last = tiles[0], tiles[-1]
        return Box(first.y0, first.x0, last.y1 - first.y0, last.x1 - first.x0).grown(self.margin)
