"""Objects from a model's class probabilities: class-1 seeds grown through the foreground and
into gaps, small objects removed (``InstanceRule``).

Seeds are the pixels with p(class 1) > ``seed_threshold`` inside the foreground, the foreground
the pixels with 1 - p(background) > ``foreground_threshold``. At 0.5/0.5 this is close to the
argmax the semantic labels hold: a 2-class model's seeds are exactly its argmax class 1 (up to
exact ties); a 3-class model's seeds are its argmax interiors that are also more than half sure
(an interior pixel won by p1 = 0.4 against p0 = p2 = 0.3 is not a seed, only grown into), and
its foreground adds pixels whose background probability is below one half but still the largest
class. The validation split tunes these thresholds and ``min_size`` (``unetflow.tune``).

A 3-class (background / interior / boundary) model's objects are its interior regions grown
through the foreground one pixel per step, so two touching cells meet along their predicted
boundary; a model trained on gapped targets also draws touching objects a little short, which
``expand`` gives back. Every step is local (a pixel depends only on pixels within the steps), so
a giant slide is grown chunk by chunk with that halo (``unetflow.io.chunked_instances.grow_chunk``) and
gives exactly the whole-image result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

#: 4-connectivity: touching cells that only meet at a corner stay separate objects
CONNECTIVITY = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class InstanceRule:
    """How class probabilities become objects: the model's recipe (``grow``, ``expand``) and the
    post-processing tuned on the validation split (thresholds, ``min_size``)."""

    grow: int = 0
    expand: int = 0
    seed_threshold: float = 0.5
    foreground_threshold: float = 0.5
    min_size: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_recipe(cls, instances: dict[str, Any] | None) -> InstanceRule:
        """The rule of a training recipe's ``instances`` entry (``TargetSettings.instance_rule``) at
        the default thresholds; none recorded = objects are the class-1 regions as they are."""
        if not instances:
            return cls()
        return cls(grow=int(instances["grow"]), expand=int(instances["expand"]))

    def with_tuned(self, tuned: dict[str, Any]) -> InstanceRule:
        """This rule with the thresholds and ``min_size`` of a tuned.json entry (recipe kept)."""
        keys = ("seed_threshold", "foreground_threshold", "min_size")
        return InstanceRule(self.grow, self.expand, *(type(getattr(self, k))(tuned[k]) for k in keys))

    def foreground(self, probabilities: np.ndarray) -> np.ndarray:
        """Foreground mask of (C, Y, X) probabilities (or a window of them)."""
        return (1.0 - np.asarray(probabilities[0], dtype=np.float32)) > np.float32(self.foreground_threshold)

    def seeds(self, probabilities: np.ndarray) -> np.ndarray:
        """Seed mask: confident class 1 inside the foreground (so growth never has to drop a seed)."""
        return (np.asarray(probabilities[1], dtype=np.float32) > np.float32(self.seed_threshold)) & self.foreground(
            probabilities
        )

    def objects(self, probabilities: np.ndarray) -> np.ndarray:
        """int32 objects 1..n of a whole (C, Y, X) probability map; the chunked predictor
        (``unetflow.io.chunked_instances.instance_labels``) gives the same objects slide-wide."""
        seeds, _ = ndimage.label(self.seeds(probabilities), structure=CONNECTIVITY, output=np.int32)
        if self.grow or self.expand:
            seeds = grow_seeds(seeds, self.foreground(probabilities), self.grow, self.expand)
        return remove_small(seeds, self.min_size)


def kept_ids(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Lookup from object id to its id once objects of fewer than ``min_size`` pixels (and ids
    with no pixel at all) are dropped (0) and the rest renumbered 1..n in id order; ``sizes[i]``
    is the pixel count of id ``i`` (index 0, background, is never kept)."""
    keep = np.asarray(sizes) >= max(min_size, 1)
    keep[0] = False
    return np.where(keep, np.cumsum(keep), 0).astype(np.int32)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without objects smaller than ``min_size`` pixels, renumbered 1..n in id order."""
    labels = np.asarray(labels)
    if not labels.size:
        return labels.astype(np.int32)
    return kept_ids(np.bincount(labels.ravel()), min_size)[labels]


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
