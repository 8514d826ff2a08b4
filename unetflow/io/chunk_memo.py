"""Chunks a prediction just wrote, kept in memory for the tasks of the same run that read them back.

Every level-0 chunk of a prediction is written once and read again several times: the instance
labelling labels it and relabels it, the pyramid averages it, the size filter counts and
rewrites it. Reading back means zarr's async round trip, decompression and the crc32c check of
data this process still had a moment ago, and at bf16 speed that I/O is a large part of a run
(``benchmarks/predict.py``). ``write_chunk`` writes a chunk and, inside ``remembering(root)``,
keeps what it wrote; ``read_region`` assembles a region from kept chunks when all of them are
kept and reads the store otherwise. The values are the stored ones (cast to the array's dtype,
codecs are lossless), so results do not depend on whether a read hit the memo.

The memo only exists inside ``remembering`` (one prediction's computation, in this process) and
only for the arrays of that store, so a store deleted and written again later (a rerun) never
sees chunks of an earlier run; tasks in other processes (dask.distributed workers) simply read
the store. At most ``budget`` bytes are kept, least recently used out first, so memory stays
bounded for a slide of any size (a chunk evicted before its last reader is read from disk).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from unetflow.tiling import Box, assemble, chunks_under

MEMO_BYTES = 128 * 1024**2
"""Default budget: 16 probability chunks of 2 classes at 1024^2 float32, or all chunks of a
2048^2 prediction, enough for a pyramid chunk to find the 2 x 2 chunks below it on most slides."""


class ChunkMemo:
    """Least-recently-used chunks of one store: ``(array path, chunk box) -> read-only array``."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.nbytes = 0
        self._chunks: OrderedDict[tuple[str, Box], np.ndarray] = OrderedDict()
        self._grids: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # path -> (shape, chunks)
        self._lock = threading.Lock()

    def put(self, path: str, array: zarr.Array, region: Box, data: np.ndarray) -> None:
        """Keep ``data``, just written to ``region`` of ``array`` (only whole stored chunks are kept)."""
        key = (path, region)
        if not _is_stored_chunk(region, array.shape, array.chunks) or data.nbytes > self.budget:
            self.drop(path, region)
            return
        view = data.view()
        view.flags.writeable = False
        with self._lock:
            self._grids[path] = (tuple(array.shape), tuple(array.chunks))
            old = self._chunks.pop(key, None)
            self.nbytes -= 0 if old is None else old.nbytes
            self._chunks[key] = view
            self.nbytes += view.nbytes
            while self.nbytes > self.budget:
                _, evicted = self._chunks.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def drop(self, path: str, region: Box) -> None:
        """Forget whatever is kept under ``region`` of ``path`` (it is being overwritten)."""
        with self._lock:
            for key in [k for k in self._chunks if k[0] == path and k[1].intersection(region) is not None]:
                self.nbytes -= self._chunks.pop(key).nbytes

    def get(self, path: str, region: Box) -> np.ndarray | None:
        """``region`` of array ``path`` (all leading axes) when every chunk under it is kept, else None."""
        with self._lock:
            if path not in self._grids:
                return None
            shape, chunks = self._grids[path]
            boxes = chunks_under(region, shape, chunks)
            if not all((path, box) in self._chunks for box in boxes):
                return None
            parts = []
            for box in boxes:
                self._chunks.move_to_end((path, box))
                parts.append((box, self._chunks[(path, box)]))
        if len(parts) == 1 and parts[0][0] == region:
            return parts[0][1]  # the kept chunk itself (read-only): no copy
        return assemble(region, parts)


def _is_stored_chunk(region: Box, shape: tuple[int, ...], chunks: tuple[int, ...]) -> bool:
    """Whether ``region`` is exactly one stored chunk of the last two axes (edge chunks clipped)."""
    (cy, cx), (h, w) = chunks[-2:], shape[-2:]
    return (
        region.y0 % cy == 0
        and region.x0 % cx == 0
        and region.height == min(cy, h - region.y0)
        and region.width == min(cx, w - region.x0)
    )


_ACTIVE: dict[str, ChunkMemo] = {}
_ACTIVE_LOCK = threading.Lock()


@contextlib.contextmanager
def remembering(root: str | Path, budget: int | None = None) -> Iterator[ChunkMemo]:
    """Keep the chunks written to the store at ``root`` in this process (at most ``budget`` bytes,
    default ``MEMO_BYTES``), until the block ends."""
    memo = ChunkMemo(MEMO_BYTES if budget is None else budget)
    with _ACTIVE_LOCK:
        _ACTIVE[str(root)] = memo
    try:
        yield memo
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(str(root), None)


def _memo(root: str) -> ChunkMemo | None:
    with _ACTIVE_LOCK:
        return _ACTIVE.get(root)


def write_chunk(root: str, path: str, region: Box, data: np.ndarray) -> None:
    """Write ``data`` (all leading axes) to ``region`` of array ``path`` of the store at ``root``,
    cast to the array's dtype, and keep it while ``remembering(root)``.

    ``data`` must not be changed afterwards when the array has its dtype (it is kept, not copied).
    """
    array = zarr.open_array(store=root, path=path, mode="r+")
    data = np.asarray(data).astype(array.dtype, copy=False)
    memo = _memo(root)
    if memo is not None:
        memo.drop(path, region)  # never serve the old chunk while the new one is being written
    array[(..., *region.slices)] = data
    if memo is not None:
        memo.put(path, array, region, data)


def read_region(root: str, path: str, region: Box) -> np.ndarray:
    """``array[..., region]`` of array ``path`` of the store at ``root``: from the memo when
    every chunk under ``region`` is kept there (a read-only array then), else from the store."""
    memo = _memo(root)
    kept = memo.get(path, region) if memo is not None else None
    if kept is not None:
        return kept
    return zarr.open_array(store=root, path=path, mode="r")[(..., *region.slices)]
