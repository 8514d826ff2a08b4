"""Instance labels of a prediction store, chunk by chunk, equal to labelling the whole image.

Each chunk is labelled on its own, then objects that touch across chunk borders are merged
(connected components of the graph of label pairs facing each other on chunk borders);
``min_size`` needs the size of every final object, so each chunk counts the pixels of the ids it
holds and the sums decide which ids survive (a lookup from final id to renumbered id) -- no step
ever loads a whole slide. The steps are ``dask.delayed`` graphs the caller joins to the
prediction graph; the chunk functions take store paths, so they run in dask.distributed workers.
They read and write through ``unetflow.io.chunk_memo``: a chunk written earlier in the same run and
process comes from memory rather than being decoded again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
from dask.delayed import Delayed
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from unetflow.instances import CONNECTIVITY, InstanceRule, grow_seeds, kept_ids
from unetflow.io.chunk_memo import keep, open_array, read_region, take, write_chunk
from unetflow.io.ome_zarr import INSTANCES, PROBABILITIES, SEEDS, SEMANTIC, level_path
from unetflow.io.task_order import task_after
from unetflow.tiling import Box, ChunkGrid

LOCAL_LABELS = "local labels"  # what label_chunk keeps for relabel_chunk (not an array path)


@dataclass(frozen=True)
class ChunkLabels:
    """What the merge step needs from one chunk labelled on its own: object count and its borders."""

    count: int
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


def _local_labels(root: str, region: Box, rule: InstanceRule) -> tuple[np.ndarray, int]:
    """Chunk-local ids 1..n of the seed regions of one chunk (deterministic)."""
    probabilities = read_region(root, level_path(PROBABILITIES, 0), region)
    local, count = ndimage.label(rule.seeds(probabilities), structure=CONNECTIVITY, output=np.int32)
    return local, int(count)


def label_chunk(root: str, region: Box, rule: InstanceRule) -> ChunkLabels:
    """Label one chunk on its own and return what the merge needs. The local ids are kept in
    memory for ``relabel_chunk`` (``chunk_memo.keep``), never stored: labelling again where
    they are gone is cheaper than writing them and reading them back."""
    local, count = _local_labels(root, region, rule)
    keep(root, LOCAL_LABELS, region, local)
    return ChunkLabels(count, local[0].copy(), local[-1].copy(), local[:, 0].copy(), local[:, -1].copy())


@dataclass(frozen=True)
class ChunkRelabel:
    """How one chunk's local ids 1..count become final ids (see ``merge_chunk_labels``).

    Provisional id ``p = offset + local``; ids merged into an object of a lower id (``merged``,
    sorted) take that object's final id (``merged_to``); every other id moves down by the number
    of merged ids below it (``merged_before`` of them lie in earlier chunks), which numbers the
    objects 1..N without gaps.
    """

    offset: int
    count: int
    merged_before: int
    merged: np.ndarray
    merged_to: np.ndarray

    def lookup(self) -> np.ndarray:
        """Final id of each local id, at index ``local`` (index 0 is background)."""
        provisional = self.offset + np.arange(1, self.count + 1, dtype=np.int64)
        final = provisional - self.merged_before - np.searchsorted(self.merged, provisional)
        final[self.merged - self.offset - 1] = self.merged_to
        return np.concatenate([[0], final]).astype(np.int32)


def relabel_chunk(root: str, region: Box, relabel: ChunkRelabel, path: str, rule: InstanceRule) -> None:
    """Write the final ids of one chunk into the array at ``path``."""
    local = take(root, LOCAL_LABELS, region)
    if local is None:  # labelled in another process, or evicted from the memo since
        local, _ = _local_labels(root, region, rule)
    write_chunk(root, path, region, relabel.lookup()[local])


def grow_chunk(root: str, region: Box, rule: InstanceRule) -> None:
    """Grow the seeds of one chunk through the foreground, widen them, and write the objects
    into instances/0 (``unetflow.instances.grow_seeds``).

    Reads seeds and probabilities as far around the chunk as ``grow_seeds`` looks, so chunk
    borders leave no trace.
    """
    seeds = open_array(root, SEEDS)
    halo = rule.grow + 3 * rule.expand  # growth, then the gap test's window (2 expand) and the claim (expand)
    window = Box(region.y0 - halo, region.x0 - halo, region.height + 2 * halo, region.width + 2 * halo)
    window = window.intersection(Box(0, 0, *seeds.shape))
    assert window is not None  # the window contains the region
    foreground = rule.foreground(read_region(root, level_path(PROBABILITIES, 0), window))
    grown = grow_seeds(read_region(root, SEEDS, window), foreground, rule.grow, rule.expand)
    write_chunk(root, level_path(INSTANCES, 0), region, grown[region.relative_to(window).slices])


def object_sizes_in_chunk(root: str, region: Box) -> tuple[np.ndarray, np.ndarray]:
    """The object ids of one chunk of instances/0 and their pixel counts in it."""
    ids, counts = np.unique(read_region(root, level_path(INSTANCES, 0), region), return_counts=True)
    keep = ids > 0
    return ids[keep].astype(np.int64), counts[keep].astype(np.int64)


def size_filter(n_objects: int, sizes: Sequence[tuple[np.ndarray, np.ndarray]], min_size: int) -> tuple[np.ndarray, int]:
    """Lookup from final id to its id once objects below ``min_size`` pixels are removed (0) and
    the rest renumbered 1..n in id order -- what ``remove_small`` does to a whole image -- and n.

    Sizes are summed over the chunks, so an object cut by chunk borders counts whole.
    """
    total = np.zeros(n_objects + 1, dtype=np.int64)
    for ids, counts in sizes:
        np.add.at(total, ids, counts)
    lookup = kept_ids(total, min_size)
    return lookup, int(lookup.max(initial=0))


def filter_chunk(root: str, region: Box, lookup: np.ndarray) -> None:
    """Rewrite one chunk of instances/0 through a ``size_filter`` lookup."""
    path = level_path(INSTANCES, 0)
    write_chunk(root, path, region, lookup[read_region(root, path, region)])


def merge_chunk_labels(grid: ChunkGrid, chunks: Sequence[ChunkLabels]) -> tuple[list[ChunkRelabel], int]:
    """Merge objects split by chunk borders: per-chunk relabelling and the number of objects.

    Chunk ``i``'s local id ``j`` is provisionally ``offsets[i] + j``. Foreground pixels facing
    each other across a chunk border belong to one object, so the connected components of that
    pair graph are the split objects; each takes its lowest provisional id. Only ids on chunk
    borders enter the graph, so memory grows with the border objects (at most four chunk edges
    per chunk), not with the number of objects in the slide.
    """
    counts = np.array([c.count for c in chunks], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    ny, nx = grid.shape
    pairs_a, pairs_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]

    def connect(a: np.ndarray, off_a: int, b: np.ndarray, off_b: int) -> None:
        touching = (a > 0) & (b > 0)
        pairs_a.append(a[touching].astype(np.int64) + off_a)
        pairs_b.append(b[touching].astype(np.int64) + off_b)

    for iy in range(ny):
        for ix in range(nx):
            i = iy * nx + ix
            if ix + 1 < nx:
                connect(chunks[i].right, offsets[i], chunks[i + 1].left, offsets[i + 1])
            if iy + 1 < ny:
                connect(chunks[i].bottom, offsets[i], chunks[i + nx].top, offsets[i + nx])
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    border_ids = np.unique(np.concatenate([a, b]))  # sorted
    n = border_ids.size
    graph = sparse.coo_matrix(
        (np.ones(a.size, np.int8), (np.searchsorted(border_ids, a), np.searchsorted(border_ids, b))), shape=(n, n)
    )
    _, component = connected_components(graph, directed=False)
    # border_ids is sorted, so the first member of each component is its lowest id: the root
    _, first = np.unique(component, return_index=True)
    root = border_ids[first][component]
    is_merged = root != border_ids
    merged, merged_root = border_ids[is_merged], root[is_merged]
    merged_to = merged_root - np.searchsorted(merged, merged_root)  # a root is never merged itself
    relabels = []
    for off, count in zip(offsets.tolist(), counts.tolist()):
        lo, hi = np.searchsorted(merged, [off + 1, off + count + 1])
        relabels.append(ChunkRelabel(off, count, int(lo), merged[lo:hi], merged_to[lo:hi]))
    return relabels, int(counts.sum()) - int(merged.size)


def instance_labels(
    root: str | Path, after: Mapping[tuple[int, int], Delayed], rule: InstanceRule = InstanceRule()
) -> tuple[Delayed, dict[tuple[int, int], Delayed]]:
    """Tasks writing the objects of ``rule`` into instances/0: seeds labelled, grown by ``grow``
    steps through the foreground and widened by ``expand`` (see ``grow_chunk``), objects below
    ``min_size`` removed -- chunk by chunk, the same objects as ``rule.objects`` of the whole image.

    Returns the task giving the object count and, per chunk, the task writing its final ids.
    Each chunk is labelled once its probability chunk is written (``after[index]``, when given),
    the border merge waits for all of them, then every chunk is relabelled. With ``grow`` or
    ``expand`` the relabelled seeds go to the ``SEEDS`` scratch array and every chunk then grows
    them once all seeds are final. With ``min_size`` every chunk then counts its objects' pixels
    and, once all are counted, is rewritten without the small ones. Memory is a few chunks plus
    the ids on chunk borders (and, with ``min_size``, one int per object).
    """
    root = str(root)
    semantic = open_array(root, level_path(SEMANTIC, 0))
    grid = ChunkGrid(*semantic.shape, semantic.chunks[-1])
    labelled = [task_after(label_chunk, root, box, rule, after=[after[index]] if index in after else []) for index, box in grid]
    relabels, n_objects = dask.delayed(merge_chunk_labels, nout=2, pure=False)(grid, labelled)
    target = SEEDS if rule.grow or rule.expand else level_path(INSTANCES, 0)
    written = {
        index: dask.delayed(relabel_chunk, pure=False)(root, box, relabels[i], target, rule)
        for i, (index, box) in enumerate(grid)
    }
    if target == SEEDS:
        seeds = list(written.values())
        written = {index: task_after(grow_chunk, root, box, rule, after=seeds) for index, box in grid}
    if rule.min_size > 0:
        sizes = [task_after(object_sizes_in_chunk, root, box, after=[written[index]]) for index, box in grid]
        lookup, n_objects = dask.delayed(size_filter, nout=2, pure=False)(n_objects, sizes, rule.min_size)
        written = {index: dask.delayed(filter_chunk, pure=False)(root, box, lookup) for index, box in grid}
    return task_after(int, n_objects, after=written.values()), written
