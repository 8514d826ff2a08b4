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

``keep`` and ``take`` hold an intermediate result that is never stored (a chunk's local instance
labels, which relabelling needs once more) the same way: taken once, computed again if not kept.
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
KEPT_SHARE = 4
"""Results of ``keep`` may use a quarter of the budget on top of it (``ChunkMemo.keep``): the local
labels of 8 chunks of 1024^2, all those of a 2048^2 prediction."""


class ChunkMemo:
    """Least-recently-used chunks of one store: ``(array path, chunk box) -> read-only array``."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.nbytes = 0
        self._chunks: OrderedDict[tuple[str, Box], np.ndarray] = OrderedDict()
        self._grids: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # path -> (shape, chunks)
        self._kept: dict[tuple[str, Box], np.ndarray] = {}  # results of ``keep``, apart from chunks
        self.kept_nbytes = 0
        self._arrays: dict[str, zarr.Array] = {}  # path -> the array opened once for the run
        self._lock = threading.Lock()

    def array(self, root: str, path: str) -> zarr.Array:
        """Array ``path`` of the store at ``root``, opened (metadata read and parsed) once."""
        with self._lock:
            found = self._arrays.get(path)
        if found is None:
            found = zarr.open_array(store=root, path=path, mode="r+")
            with self._lock:
                found = self._arrays.setdefault(path, found)
        return found

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

    def keep(self, name: str, region: Box, data: np.ndarray) -> None:
        """Keep ``data``, a result computed for ``region`` and stored nowhere, for one ``take``.

        Kept results get ``budget // KEPT_SHARE`` bytes beside the chunks, first come first kept:
        they wait for a later step of the whole run (not for a neighbour, as chunks do), so on a
        large slide most would only push out the chunks that pyramid tasks are about to read.
        """
        with self._lock:
            if (name, region) in self._kept or self.kept_nbytes + data.nbytes > self.budget // KEPT_SHARE:
                return
            view = data.view()
            view.flags.writeable = False
            self._kept[(name, region)] = view
            self.kept_nbytes += view.nbytes

    def take(self, name: str, region: Box) -> np.ndarray | None:
        """What ``keep`` kept under ``name`` and ``region`` (forgotten now), or None."""
        with self._lock:
            data = self._kept.pop((name, region), None)
            self.kept_nbytes -= 0 if data is None else data.nbytes
        return data

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


def open_array(root: str, path: str) -> zarr.Array:
    """Array ``path`` of the store at ``root``, to read and write: while ``remembering(root)``
    opened once for the run (opening reads and parses its metadata, about a millisecond, and a
    chunk's tasks would open arrays a dozen times)."""
    memo = _memo(root)
    return memo.array(root, path) if memo is not None else zarr.open_array(store=root, path=path, mode="r+")


def write_chunk(root: str, path: str, region: Box, data: np.ndarray) -> None:
    """Write ``data`` (all leading axes) to ``region`` of array ``path`` of the store at ``root``,
    cast to the array's dtype, and keep it while ``remembering(root)``.

    ``data`` must not be changed afterwards when the array has its dtype (it is kept, not copied).
    """
    array = open_array(root, path)
    data = np.asarray(data).astype(array.dtype, copy=False)
    memo = _memo(root)
    if memo is not None:
        memo.drop(path, region)  # never serve the old chunk while the new one is being written
    array[(..., *region.slices)] = data
    if memo is not None:
        memo.put(path, array, region, data)


def keep(root: str, name: str, region: Box, data: np.ndarray) -> None:
    """Keep ``data`` for one later ``take`` by a task of the same run, while ``remembering(root)``
    and within the memo's share for kept results (else nothing is kept); ``data`` must not be
    changed afterwards."""
    memo = _memo(root)
    if memo is not None:
        memo.keep(name, region, data)


def take(root: str, name: str, region: Box) -> np.ndarray | None:
    """What ``keep`` kept under ``name`` and ``region`` (read-only), or None (not kept: another
    process, outside ``remembering``, or no room), so the caller computes it again."""
    memo = _memo(root)
    return memo.take(name, region) if memo is not None else None


def read_region(root: str, path: str, region: Box) -> np.ndarray:
    """``array[..., region]`` of array ``path`` of the store at ``root``: from the memo when
    every chunk under ``region`` is kept there (a read-only array then), else from the store."""
    memo = _memo(root)
    if memo is None:
        return zarr.open_array(store=root, path=path, mode="r")[(..., *region.slices)]
    kept = memo.get(path, region)
    return kept if kept is not None else memo.array(root, path)[(..., *region.slices)]
