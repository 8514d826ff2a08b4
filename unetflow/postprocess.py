"""Object instances from a foreground probability map.

The U-Net predicts foreground vs background per pixel; objects are what the evaluation (and a
user) counts. Two ways to get them:

* connected components (what predict writes for a 2-class model): every 4-connected foreground
  region is one object. Exact when the network draws the background gap between touching
  objects, as the paper's gapped targets and border weights train it to.
* ``watershed``: where the gap is missing or faint, flood a relief from one marker per peak so
  touching objects split along their neck (``source="distance"``: distance to the background)
  or along the probability dip between them (``source="probability"``). A peak seeds its own
  object only if it rises ``h`` above the pass to a higher peak (h-maxima), so noise does not
  over-split; a foreground region with no such peak still becomes one object, so watershed only
  ever splits what connected components would find, never drops it.

A 3-class model's objects are interior seeds grown through the foreground
(``unetflow.instances.grow_seeds``).

``unetflow.instances.remove_small`` then drops objects below ``min_size`` pixels (debris, speckle).
``tuned_objects`` applies an entry of tune's tuned.json (either way, with its ``min_size``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential
from skimage.segmentation import watershed as flood

from unetflow.instances import InstanceRule, remove_small

SOURCES = ("distance", "probability")


def watershed(
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    source: str = "distance",
    h_distance: float = 2.0,
    h_probability: float = 0.1,
) -> np.ndarray:
    """int32 instances from a (Y, X) foreground probability by marker-controlled watershed.

    The foreground (probability > ``threshold``) is flooded from the h-maxima of the relief
    (``source``), with depth ``h_distance`` pixels or ``h_probability`` probability units.
    """
    if source not in SOURCES:
        raise ValueError(f"watershed source must be one of {SOURCES}, got {source!r}")
    probability = np.asarray(probability, dtype=np.float32)
    mask = probability > threshold
    if source == "distance":
        relief, h = ndimage.distance_transform_edt(mask).astype(np.float32), h_distance
    else:
        relief, h = np.where(mask, probability, 0.0).astype(np.float32), h_probability
    markers, n_markers = ndimage.label(h_maxima(relief, h).astype(bool) & mask)
    # Regions whose relief never rises h (small or flat objects) are seeded as a whole.
    regions, n_regions = ndimage.label(mask)
    seeded = np.zeros(n_regions + 1, dtype=bool)
    seeded[regions[markers > 0]] = True
    unseeded = ~seeded[regions] & mask
    markers[unseeded] = regions[unseeded] + n_markers
    labels = flood(-relief, markers, mask=mask)
    return relabel_sequential(labels.astype(np.int32, copy=False))[0]


def tuned_objects(probabilities: np.ndarray, recipe: InstanceRule, entry: dict[str, Any]) -> np.ndarray:
    """The objects of one (C, Y, X) probability map under a tuned.json entry (``unetflow.tune``):
    the model's recipe at the entry's thresholds, or the watershed of the foreground probability
    at its threshold and depth; then the entry's ``min_size``."""
    if entry["mode"] == "watershed":
        foreground = 1.0 - np.asarray(probabilities[0], dtype=np.float32)
        labels = watershed(foreground, threshold=entry["foreground_threshold"], h_distance=entry["h_distance"])
        return remove_small(labels, int(entry["min_size"]))
    return recipe.with_tuned(entry).objects(probabilities)
