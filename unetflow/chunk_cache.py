"""A small LRU cache of decoded input chunks, shared by the chunk tasks of a prediction.

Neighbouring output chunks read overlapping input blocks (chunk plus context halo) and zarr
decodes whole chunks, so without a cache an interior input chunk is decoded for each of the
nine output chunks around it; keeping the last few chunks lets consecutive tasks of a row share
them. Kept apart from ``unetflow.predict`` because it knows nothing of models or outputs.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from unetflow.tiling import Box, TileLayout, assemble, chunks_under


class CachedChunks:
    """Read-only view of a (C, Y, X) zarr array that keeps the ``capacity`` most recently decoded
    chunks. Supports the ``[..., y0:y1, x0:x1]`` reads of ``read_window``."""

    def __init__(self, array: zarr.Array, capacity: int) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.capacity = capacity
        self._decoded: OrderedDict[Box, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _chunk(self, box: Box) -> np.ndarray:
        with self._lock:
            if box in self._decoded:
                self._decoded.move_to_end(box)
                return self._decoded[box]
        data = self.array[(..., *box.slices)]
        with self._lock:
            self._decoded[box] = data
            while len(self._decoded) > self.capacity:
                self._decoded.popitem(last=False)
        return data

    def __getitem__(self, index: tuple[Any, slice, slice]) -> np.ndarray:
        _, rows, cols = index
        wanted = Box(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)
        return assemble(wanted, [(box, self._chunk(box)) for box in chunks_under(wanted, self.shape, self.array.chunks)])


_HELD: dict[tuple[str, str], np.ndarray] = {}
"""Images held whole and decoded by the process that predicts them (``hold_decoded``)."""


def hold_decoded(store: str, path: str, pixels: np.ndarray) -> None:
    """Serve array ``path`` of ``store`` from ``pixels``, its decoded contents, to the chunk tasks
    of this process until ``release_shared_image``: an image small enough to be read whole for
    its statistics is then decoded once, not once for them and again for the chunks."""
    _HELD[(store, path)] = pixels


@functools.lru_cache(maxsize=1)
def _cached_image(store: str, path: str, written_ns: int, capacity: int) -> CachedChunks:
    return CachedChunks(zarr.open_array(store=store, path=path, mode="r"), capacity)


def shared_image(store: str, path: str, capacity: int) -> CachedChunks | np.ndarray:
    """Array ``path`` of ``store`` with a decoded-chunk cache shared by the threads of a process
    (a rewritten array, e.g. a re-ingested store, gets a fresh cache), or its pixels where they
    are held (``hold_decoded``)."""
    held = _HELD.get((store, path))
    if held is not None:
        return held
    written = (Path(store) / path / "zarr.json").stat().st_mtime_ns
    return _cached_image(store, path, written, capacity)


def release_shared_image() -> None:
    """Drop the shared cache and held images: the next image (or a rerun) reads another array."""
    _cached_image.cache_clear()
    _HELD.clear()


def cache_capacity(input_chunks: Sequence[int], layout: TileLayout, chunk: int) -> int:
    """Input chunks to keep decoded: those under two input blocks of a full output chunk.

    Enough for the next task in a row to reuse the chunks it shares with the previous one (two
    thirds of them when input and output chunks are equal), at the memory of about two blocks.
    """
    block = layout.block(Box(0, 0, chunk, chunk))
    return 2 * (block.height // input_chunks[-2] + 2) * (block.width // input_chunks[-1] + 2)
