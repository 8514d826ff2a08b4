"""Training targets from instance labels: gaps between touching objects, and boundary classes.

The network predicts classes per pixel, but users count objects. Two things make the objects
recoverable from the classes:

* **Gaps** (the paper's Fig. 3c/d): where two instances touch, their touching pixels become
  background, so that "foreground" alone already separates them and the weight map's border term
  (computed on the gapped labels) lands exactly on those gap pixels. ``gap`` is the width of
  background put between two touching objects, in pixels; an odd width takes the extra pixel
  from the object with the higher id. An object is never erased by its gap: one that would lose
  every pixel is kept whole.
* **Boundary classes** (``mode="boundary"``, 3 classes): background 0, object interior 1, object
  boundary 2 -- the object pixels within ``boundary_width`` of a pixel that is not theirs. Instances
  are then interior seeds grown into the foreground (``unetflow.postprocess.grow_seeds``), so
  touching objects separate along the predicted boundary even where the gap is not drawn. An
  object too thin to have an interior is all interior, so every object keeps a seed.
  ``mode="binary"`` is the paper's 2-class target: background 0, object 1.

Both are local operations (a pixel's class depends on labels within ``halo`` of it), so a block
plus that halo gives exactly the whole-image result and label images of any size are processed
block by block by the weights stage.

Example
-------
>>> import numpy as np
>>> labels = np.zeros((4, 6), np.int32); labels[:, :3] = 1; labels[:, 3:] = 2
>>> separate_touching(labels, 1)[0]
array([1, 1, 1, 0, 2, 2], dtype=int32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

TARGET_MODES = ("binary", "boundary")
BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


@dataclass(frozen=True)
class TargetSettings:
    """What the network is trained to predict (the ``weights.target`` config keys)."""

    mode: str = "boundary"
    gap: int = 2
    boundary_width: int = 1

    def __post_init__(self) -> None:
        if self.mode not in TARGET_MODES:
            raise ValueError(f"target mode must be one of {TARGET_MODES}, got {self.mode!r}")
        if self.gap < 0 or self.boundary_width < 1:
            raise ValueError(f"need gap >= 0 and boundary_width >= 1, got {self.gap}, {self.boundary_width}")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TargetSettings:
        return cls(mode=config["mode"], gap=int(config["gap"]), boundary_width=int(config["boundary_width"]))

    @property
    def n_classes(self) -> int:
        """Output classes of a network trained on these targets."""
        return 3 if self.mode == "boundary" else 2

    @property
    def gap_reach(self) -> int:
        """How far the gap rule looks for another object: ceil(gap / 2) pixels."""
        return math.ceil(self.gap / 2)

    @property
    def growth_steps(self) -> int:
        """How far interior seeds grow at prediction: across the boundary band on both sides of a
        gap, with room for a band predicted wider than trained (0 for binary targets)."""
        return 2 * self.boundary_width + self.gap if self.mode == "boundary" else 0

    def instance_rule(self, gaps_drawn: bool) -> dict[str, int]:
        """How predict turns this target's classes into objects (see ``postprocess.grow_seeds``).

        ``gaps_drawn``: whether the gap rule removed any pixel from the training objects. Only
        then did the model learn to draw objects smaller by ``gap_reach`` where they touch, and
        only then are its objects widened by that much; data whose objects never touch (EM
        membranes) keep their predicted extent.
        """
        return {"grow": self.growth_steps, "expand": self.gap_reach if gaps_drawn else 0}

    @property
    def halo(self) -> int:
        """Context a block needs for exact targets: the gap's reach, then the boundary width."""
        return self.gap_reach + (self.boundary_width if self.mode == "boundary" else 0)


def _within(mask: np.ndarray, distance: float) -> np.ndarray:
    """Pixels within Euclidean ``distance`` of ``mask`` (False everywhere when mask is empty)."""
    if distance <= 0 or not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return ndimage.distance_transform_edt(~mask) <= distance


def separate_touching(labels: Any, gap: int) -> np.ndarray:
    """``labels`` (int32) with ``gap`` pixels of background between every two touching objects.

    A pixel of object ``i`` becomes background when an object of lower id lies within
    ``ceil(gap / 2)`` pixels, or one of higher id within ``floor(gap / 2)`` pixels (Euclidean,
    so objects meeting only at a corner, already apart under 4-connectivity, are left alone for
    gap 1 and 2). One distance transform per object, inside its bounding box dilated by the reach.
    """
    labels = np.asarray(labels)
    out = labels.astype(np.int32, copy=True)
    if gap <= 0 or labels.size == 0:
        return out
    lower_reach, higher_reach = math.ceil(gap / 2), gap // 2
    reach = lower_reach
    ids, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    offset = 1 if ids[0] == 0 else 0  # compact index of the first object id
    size_y, size_x = labels.shape
    for index, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None or index < offset:
            continue
        ys = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, size_y))
        xs = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, size_x))
        window = compact[ys, xs]
        own = window == index
        others = (window >= offset) & ~own
        if not others.any():
            continue
        drop = own & (
            _within(others & (window < index), lower_reach) | _within(others & (window > index), higher_reach)
        )
        if drop.any() and not np.array_equal(drop, own):  # never erase a whole object
            out[ys, xs][drop] = 0
    return out


def boundary_pixels(labels: np.ndarray, width: int) -> np.ndarray:
    """Object pixels within Euclidean ``width`` of a pixel with another value (background or not)."""
    footprint = ndimage.distance_transform_edt(~_centre(width)) <= width
    higher = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest") != labels
    lower = ndimage.minimum_filter(labels, footprint=footprint, mode="nearest") != labels
    return (labels > 0) & (higher | lower)


def _centre(radius: int) -> np.ndarray:
    """A (2r+1)^2 boolean array, True at its centre only."""
    centre = np.zeros((2 * radius + 1,) * 2, dtype=bool)
    centre[radius, radius] = True
    return centre


def class_targets(gapped: np.ndarray, settings: TargetSettings) -> np.ndarray:
    """uint8 class per pixel of gapped instance labels (see the module docstring)."""
    gapped = np.asarray(gapped)
    classes = (gapped > 0).astype(np.uint8)
    if settings.mode == "binary":
        return classes
    boundary = boundary_pixels(gapped, settings.boundary_width)
    # Objects with no interior pixel left stay all interior, so each keeps a seed.
    with_interior = np.unique(gapped[(gapped > 0) & ~boundary])
    classes[boundary & np.isin(gapped, with_interior)] = BOUNDARY
    return classes


def targets(labels: Any, settings: TargetSettings) -> tuple[np.ndarray, np.ndarray]:
    """(gapped labels int32, class targets uint8) of a whole in-memory label image."""
    gapped = separate_touching(labels, settings.gap)
    return gapped, class_targets(gapped, settings)
