"""Prediction at the object size a model was trained on (cellpose's ``diameter``).

A U-Net learns objects at the sizes its training images showed it. Nuclei imaged at another
magnification, or of another cell type, can be two or three times larger or smaller; the network
then fragments the large ones (its context no longer spans a nucleus) and blurs the edges of the
small ones (a one-pixel edge is a third of their area). Measured on the DSB 2018 subset with one
model: predicting its large-nucleus test images at half size and its small-nucleus ones at 1.5-2x
raised their mean AP from 0.27 to 0.45 and from 0.28 to 0.34 (README, Results).

So the image is resampled by ``zoom = model diameter / image diameter`` before the network and the
probabilities are resampled back onto the image's own pixel grid: every output keeps the image's
shape and pixel size. The model's diameter is the typical object diameter of its training images
(recorded with the model, ``model_diameter``); the image's is given (``predict.diameter:
<pixels>``) or estimated (``auto``) the same way from the objects of a first pass
(``estimate_zoom``).

Geometry: an axis of ``n`` pixels zoomed to ``m = round(n * zoom)`` pixels puts the centre of
zoomed pixel ``u`` at native coordinate ``(u + 0.5) * n / m - 0.5`` (pixel areas line up: scipy's
``zoom(..., grid_mode=True)``), with linear interpolation between pixel centres, clamped at the
border. Each zoomed pixel depends on at most 2 x 2 native pixels at fixed positions and each
native output pixel on 2 x 2 zoomed probabilities, and tiles sit on the pooling grid of the zoomed
image, so chunk by chunk is exactly the whole image (``tests/test_predict.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetflow.tiling import Box, ChunkGrid, TileLayout

#: zoom factors outside [1/4, 4] resample too far to be a size correction (a wrong estimate)
ZOOM_RANGE = (0.25, 4.0)
#: an estimated zoom is rounded to quarter octaves: images whose objects differ from the model's
#: by less than ~9 % are not resampled at all, and similar images get the same zoom
ZOOM_STEPS_PER_OCTAVE = 4
#: at most this many chunks of a large image (evenly spread) are predicted to estimate its zoom
ESTIMATE_REGIONS = 16
#: ``train.rescale`` resamples training images by at most 2x either way: the gapped targets are
#: resampled by nearest neighbour, which keeps a 2-pixel gap between touching objects at half size
#: but not at a quarter
TRAIN_ZOOM_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class AxisMap:
    """One axis of ``native`` pixels seen as ``zoomed`` pixels (pixel areas aligned)."""

    native: int
    zoomed: int

    @classmethod
    def of(cls, native: int, zoom: float) -> AxisMap:
        return cls(native, max(1, round(native * zoom)))

    def to_native(self, positions: np.ndarray) -> np.ndarray:
        """Native coordinates of zoomed pixel centres."""
        return (positions + 0.5) * (self.native / self.zoomed) - 0.5

    def to_zoomed(self, positions: np.ndarray) -> np.ndarray:
        """Zoomed coordinates of native pixel centres."""
        return (positions + 0.5) * (self.zoomed / self.native) - 0.5


@dataclass(frozen=True)
class Linear:
    """Linear interpolation at coordinates along an axis of ``size`` samples, clamped at its ends:
    value = (1 - weight) * sample[lower] + weight * sample[upper]."""

    lower: np.ndarray
    upper: np.ndarray
    weight: np.ndarray

    @classmethod
    def at(cls, coordinates: np.ndarray, size: int) -> Linear:
        clamped = np.clip(coordinates, 0.0, size - 1)
        lower = np.floor(clamped).astype(np.int64)
        upper = np.minimum(lower + 1, size - 1)
        return cls(lower, upper, (clamped - lower).astype(np.float32))

    @property
    def start(self) -> int:
        return int(self.lower.min())

    @property
    def stop(self) -> int:
        return int(self.upper.max()) + 1

    def apply(self, samples: np.ndarray, axis: int, offset: int) -> np.ndarray:
        """Interpolate ``samples`` (whose index 0 on ``axis`` is position ``offset``) along ``axis``."""
        shape = [1] * samples.ndim
        shape[axis] = -1
        weight = self.weight.reshape(shape)
        low = np.take(samples, self.lower - offset, axis=axis)
        high = np.take(samples, self.upper - offset, axis=axis)
        return (low * (1.0 - weight) + high * weight).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Nearest:
    """Nearest-neighbour sampling at coordinates along an axis of ``size`` samples (halves round
    up, clamped at its ends): values stay values of the array (a class, that pixel's weight)."""

    index: np.ndarray

    @classmethod
    def at(cls, coordinates: np.ndarray, size: int) -> Nearest:
        return cls(np.clip(np.floor(coordinates + 0.5), 0, size - 1).astype(np.int64))

    @property
    def start(self) -> int:
        return int(self.index.min())

    @property
    def stop(self) -> int:
        return int(self.index.max()) + 1

    def apply(self, samples: np.ndarray, axis: int, offset: int) -> np.ndarray:
        return np.take(samples, self.index - offset, axis=axis)


class ZoomedView:
    """A (..., Y, X) array seen at ``zoom``: sliceable like an array by ``[..., rows, cols]`` with
    in-bounds slices (how ``read_window`` reads), each read sampled from the native pixels under
    it, so a zarr slide is read chunk by chunk as before. Images are interpolated linearly
    (``Linear``, float32); class targets and weight maps take the nearest pixel (``Nearest``)."""

    def __init__(self, array: Any, zoom: float, sampling: type[Linear] | type[Nearest] = Linear) -> None:
        *leading, height, width = array.shape
        self.array = array
        self.sampling = sampling
        self.rows = AxisMap.of(height, zoom)
        self.cols = AxisMap.of(width, zoom)
        self.shape = (*leading, self.rows.zoomed, self.cols.zoomed)

    def __getitem__(self, key: tuple[Any, slice, slice]) -> np.ndarray:
        rows, cols = key[-2], key[-1]
        ys = self.sampling.at(self.rows.to_native(np.arange(rows.start, rows.stop)), self.rows.native)
        xs = self.sampling.at(self.cols.to_native(np.arange(cols.start, cols.stop)), self.cols.native)
        native = np.asarray(self.array[..., ys.start : ys.stop, xs.start : xs.stop])
        return xs.apply(ys.apply(native, -2, ys.start), -1, xs.start)


def zoomed_region(view: ZoomedView, region: Box) -> tuple[Box, Linear, Linear]:
    """The zoomed box whose probabilities interpolate native ``region``, and the interpolation."""
    ys = Linear.at(view.rows.to_zoomed(np.arange(region.y0, region.y1)), view.rows.zoomed)
    xs = Linear.at(view.cols.to_zoomed(np.arange(region.x0, region.x1)), view.cols.zoomed)
    return Box(ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start), ys, xs


def zoomed_chunk(chunk: int, zoom: float) -> int:
    """The edge of a native chunk in zoomed pixels (what the tile layout of a zoomed image fits)."""
    return max(1, math.ceil(chunk * zoom))


def native_cache_layout(layout: TileLayout, zoom: float) -> TileLayout:
    """A layout whose input block around a native chunk covers what a zoomed prediction reads:
    shrinking (zoom < 1) widens the native halo to margin / zoom."""
    if zoom >= 1:
        return layout
    return TileLayout(tile=layout.tile, margin=math.ceil(layout.margin / zoom) + 1, align=layout.align)


# -- how far to zoom ------------------------------------------------------------------------------
def equivalent_diameter(area: float) -> float:
    """Diameter of the disc of ``area`` pixels."""
    return 2.0 * math.sqrt(area / math.pi)


def object_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel areas of the objects of ``labels`` that do not touch its border (cut objects
    understate the size), or of all of them when every object touches it."""
    sizes = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    inner = sizes.copy()
    inner[border] = 0
    inner[0] = 0
    chosen = inner if inner.any() else np.concatenate([[0], sizes[1:]])
    return chosen[chosen > 0].astype(np.float64)


def typical_area(areas: np.ndarray) -> float:
    """The area of the object that holds the median object pixel: an area-weighted median, which
    the many small fragments and specks of a first pass at the wrong size do not drag down (an
    unweighted median sized a field of 40 px nuclei cut in pieces at 13 px)."""
    ordered = np.sort(np.asarray(areas, dtype=np.float64))
    cumulative = np.cumsum(ordered)
    return float(ordered[np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def typical_diameter(areas: np.ndarray) -> float | None:
    """The equivalent diameter of ``typical_area`` (None: no objects), the one size statistic of
    training images (``unetflow.weighting.object_sizes``, ``image_zoom``) and of ``auto``."""
    return equivalent_diameter(typical_area(areas)) if np.size(areas) else None


def quantised_zoom(zoom: float) -> float:
    """``zoom`` clipped to ``ZOOM_RANGE`` and rounded to quarter octaves (1.0 exactly near 1)."""
    low, high = ZOOM_RANGE
    steps = round(math.log2(min(max(zoom, low), high)) * ZOOM_STEPS_PER_OCTAVE)
    return float(2.0 ** (steps / ZOOM_STEPS_PER_OCTAVE))


def sample_regions(height: int, width: int, chunk: int, limit: int = ESTIMATE_REGIONS) -> list[Box]:
    """The chunks of an image to estimate its object size from: all of them, or ``limit`` spread
    evenly over a large image (the middle of the chunk list and every n-th around it)."""
    boxes = [box for _, box in ChunkGrid(height, width, chunk)]
    if len(boxes) <= limit:
        return boxes
    picks = np.linspace(0, len(boxes) - 1, limit).round().astype(int)
    return [boxes[i] for i in sorted(set(picks.tolist()))]


@dataclass(frozen=True)
class ZoomEstimate:
    """What ``estimate_zoom`` measured: each pass's zoom and typical object diameter (native px)."""

    zoom: float
    passes: Sequence[tuple[float, float | None]]
    model_diameter: float

    def to_json(self) -> dict[str, Any]:
        return {
            "zoom": self.zoom,
            "model_diameter": self.model_diameter,
            "passes": [{"zoom": z, "typical_diameter": d} for z, d in self.passes],
        }


def estimate_zoom(predict_objects: Any, regions: Sequence[Box], model_diameter: float) -> ZoomEstimate:
    """The zoom that brings an image's objects to ``model_diameter``, from at most two passes.

    ``predict_objects(region, zoom)`` returns the objects (native pixels) of ``region`` predicted at
    ``zoom``. The first pass, at the native size, measures the objects' typical diameter
    (``typical_diameter``); when that implies a zoom, a second pass at it measures them again,
    nearer the size the model knows (it sees objects best at its own scale), and that measurement
    decides. No objects in the first pass: no zoom (nothing to size); none in the second: the
    first pass's zoom.
    """

    def measured(zoom: float) -> float | None:
        return typical_diameter(np.concatenate([object_areas(predict_objects(region, zoom)) for region in regions]))

    first = measured(1.0)
    if first is None:
        return ZoomEstimate(1.0, [(1.0, None)], model_diameter)
    zoom = quantised_zoom(model_diameter / first)
    if zoom == 1.0:
        return ZoomEstimate(1.0, [(1.0, first)], model_diameter)
    second = measured(zoom)
    final = zoom if second is None else quantised_zoom(model_diameter / second)
    return ZoomEstimate(final, [(1.0, first), (zoom, second)], model_diameter)


def model_diameter(checkpoint: dict[str, Any]) -> float | None:
    """The object diameter a model was trained at (None: not recorded): the typical diameter of
    its training images (``unetflow.weighting.object_sizes``), which auto measures the same way;
    a model from before that was recorded has only its objects' median diameter, a smaller
    figure where sizes vary (auto then zooms such images less than it should)."""
    size = (checkpoint.get("recipe") or {}).get("object_size") or {}
    value = size.get("typical_diameter") or size.get("median_diameter")
    return float(value) if value else None


def image_zoom(labels: np.ndarray, model_diameter: float) -> float:
    """The zoom that brings the objects of one labelled image to ``model_diameter`` (quarter
    octaves within ``TRAIN_ZOOM_RANGE``; 1.0 for an image without objects), measured as ``auto``
    measures predicted objects."""
    diameter = typical_diameter(object_areas(np.asarray(labels)))
    if diameter is None:
        return 1.0
    low, high = TRAIN_ZOOM_RANGE
    return min(max(quantised_zoom(model_diameter / diameter), low), high)

