"""Objects from a model's classes: class-1 seeds grown through the foreground and into gaps.

A 3-class (background / interior / boundary) model's objects are its interior regions grown
through the foreground one pixel per step, so two touching cells meet along their predicted
boundary; a model trained on gapped targets also draws touching objects a little short, which
``expand`` gives back. Every step is local (a pixel depends only on pixels within the steps), so
a giant slide is grown chunk by chunk with that halo (``unetflow.io.ome_zarr.grow_chunk``) and
gives exactly the whole-image result.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _first_neighbour(labels: np.ndarray) -> np.ndarray:
    """Per pixel, the id of its upper neighbour, else left, else right, else lower (0: none)."""
    up, left, right, down = (np.zeros_like(labels) for _ in range(4))
    up[1:], left[:, 1:], right[:, :-1], down[:-1] = labels[:-1], labels[:, :-1], labels[:, 1:], labels[1:]
    picked = up
    for other in (left, right, down):
        picked = np.where(picked > 0, picked, other)
    return picked


def _claim(labels: np.ndarray, allowed: np.ndarray, steps: int) -> np.ndarray:
    """Grow ``labels`` into unclaimed ``allowed`` pixels by up to ``steps`` 4-connected steps.

    Where two objects arrive at a pixel in the same step, the one from above (then left, right,
    below) wins: a rule of position, not of id, so chunk-merged ids and whole-image ids give the
    same objects. Growth depends only on pixels within ``steps``, so a window with that halo
    gives exactly the whole-image result.
    """
    for _ in range(steps):
        free = allowed & (labels == 0)
        grown = np.where(free, _first_neighbour(labels), 0)
        if not grown.any():
            break
        labels = np.where(free, grown, labels)
    return labels


def _between_objects(labels: np.ndarray, reach: int) -> np.ndarray:
    """Background pixels with two different objects within ``reach`` (a square window)."""
    size = 2 * reach + 1
    highest = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(np.where(labels > 0, labels, np.iinfo(np.int32).max), size=size, mode="constant", cval=np.iinfo(np.int32).max)
    return (labels == 0) & (highest > 0) & (lowest < highest)


def grow_seeds(seeds: np.ndarray, foreground: np.ndarray, steps: int, expand: int = 0) -> np.ndarray:
    """Objects from ``seeds`` (int ids): grown through ``foreground`` by up to ``steps`` pixels,
    then by up to ``expand`` pixels into the gaps between them.

    Growth follows the foreground and never jumps a background gap; foreground farther than
    ``steps`` from every seed stays background. ``expand`` gives back what the training gaps
    took: a model trained on targets with a gap of g pixels draws touching objects ceil(g/2)
    pixels short on their touching sides only, so only background pixels with two objects
    within 2 * expand pixels (a gap) are claimed; free edges keep their predicted extent.
    """
    labels = np.where(foreground, seeds, 0).astype(np.int32, copy=False)
    labels = _claim(labels, np.asarray(foreground, dtype=bool), steps)
    if expand <= 0:
        return labels
    return _claim(labels, _between_objects(labels, 2 * expand), expand)
