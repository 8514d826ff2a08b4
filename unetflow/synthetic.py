"""Seeded synthetic microscopy: touching irregular cells with thin bright membranes.

The embedded default dataset, so the pipeline runs on a fresh machine without a download. The
images imitate ISBI 2012 EM tissue: space is tiled by cells (a jittered-grid Voronoi diagram whose
borders are bent by a smooth warp field), cells are separated by thin bright membranes (label 0,
like ISBI's membrane class), a few cells are missing (extracellular background), and the whole
field sees uneven illumination, blur and noise.

Everything is a pure function of (seed, pixel coordinates): ``render_region`` gives identical
pixels for a region whether it is rendered alone or as part of a larger one (up to the pixel noise,
which is seeded per region). That is what lets ``write_giant_slide`` stream a slide of any size
chunk by chunk into zarr with no seams and without holding it in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm import tqdm

from unetflow.store import atomic_output

_WAVES = 6  # sinusoids summed for each smooth field


@dataclass(frozen=True)
class CellStyle:
    """Appearance parameters of the synthetic tissue (the ``dataset.synthetic`` config section)."""

    cell_radius: float = 14.0
    membrane_width: float = 2.0
    noise: float = 0.08
    missing_fraction: float = 0.08


def _mix(v: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: uint64 -> uniform float64 in [0, 1)."""
    v = v * np.uint64(0xBF58476D1CE4E5B9)
    v ^= v >> np.uint64(31)
    v *= np.uint64(0x94D049BB133111EB)
    v ^= v >> np.uint64(29)
    return (v >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _grid_seeds(
    seed: int, spacing: float, gy: np.ndarray, gx: np.ndarray, missing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One jittered seed point per grid cell, each a pure function of (seed, grid cell).

    Returns positions (N, 2), global integer ids (N,) unique per grid cell, and per-cell
    properties (exists, shade); cells that do not exist become extracellular background.
    """
    with np.errstate(over="ignore"):  # the integer hash relies on uint64 wrap-around
        h = (gy.astype(np.int64).astype(np.uint64) * np.uint64(73856093)) ^ (
            gx.astype(np.int64).astype(np.uint64) * np.uint64(19349663)
        )
        h ^= np.uint64(seed & 0xFFFFFFFF) * np.uint64(83492791)
        rng_vals = [_mix(h + np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) for k in range(4)]
    jitter_y, jitter_x, keep, shade = rng_vals
    pos = np.stack([(gy + 0.15 + 0.7 * jitter_y) * spacing, (gx + 0.15 + 0.7 * jitter_x) * spacing], axis=-1)
    ids = (gy.astype(np.int64) + 2**20) * 2**21 + (gx.astype(np.int64) + 2**20)
    return pos, ids, np.stack([keep >= missing, shade], axis=-1)


def _smooth_field(seed: int, stream: int, ys: np.ndarray, xs: np.ndarray, wavelength: float) -> np.ndarray:
    """A smooth random field in [-1, 1] on the grid ``ys`` x ``xs`` (a sum of random plane waves).

    Defined at any coordinate, so separately rendered regions agree. Each wave is evaluated
    separably, sin(a + b) = sin a cos b + cos a sin b, with a depending on y only and b on x only:
    two outer products instead of a sine per pixel.
    """
    rng = np.random.default_rng([seed & 0xFFFFFFFF, stream])  # independent field per stream
    out = np.zeros((ys.size, xs.size))
    for _ in range(_WAVES):
        angle = rng.uniform(0, 2 * math.pi)
        freq = 2 * math.pi / (wavelength * rng.uniform(0.6, 1.4))
        phase = rng.uniform(0, 2 * math.pi)
        a = freq * math.sin(angle) * ys + phase
        b = freq * math.cos(angle) * xs
        out += np.outer(np.sin(a), np.cos(b))
        out += np.outer(np.cos(a), np.sin(b))
    return out / _WAVES


def render_region(
    seed: int, y0: int, x0: int, height: int, width: int, style: CellStyle = CellStyle()
) -> tuple[np.ndarray, np.ndarray]:
    """Render the (height, width) region at (y0, x0) of the infinite synthetic tissue ``seed``.

    Returns ``(image, labels)``: float32 intensities (roughly 0..1) and int64 cell ids (0 =
    membrane or extracellular space). Ids are global per tissue, so neighbouring regions agree.
    """
    halo = int(math.ceil(style.membrane_width)) + 3  # membranes and blur need neighbours
    spacing = 2.0 * style.cell_radius
    ys = np.arange(y0 - halo, y0 + height + halo, dtype=np.float64)
    xs = np.arange(x0 - halo, x0 + width + halo, dtype=np.float64)
    warp = 0.5 * style.cell_radius
    wy = ys[:, None] + warp * _smooth_field(seed, 1, ys, xs, 3 * spacing)
    wx = xs[None, :] + warp * _smooth_field(seed, 2, ys, xs, 3 * spacing)

    reach = warp + 2 * spacing
    gy, gx = np.meshgrid(
        np.arange(math.floor((ys[0] - reach) / spacing), math.ceil((ys[-1] + reach) / spacing) + 1),
        np.arange(math.floor((xs[0] - reach) / spacing), math.ceil((xs[-1] + reach) / spacing) + 1),
        indexing="ij",
    )
    pos, ids, props = _grid_seeds(seed, spacing, gy.ravel(), gx.ravel(), style.missing_fraction)
    _, nearest = cKDTree(pos).query(np.stack([wy.ravel(), wx.ravel()], axis=-1), workers=-1)
    cell = nearest.reshape(wy.shape)

    size = max(1, int(round(style.membrane_width)))
    membrane = ndimage.maximum_filter(cell, size=size + 1) != ndimage.minimum_filter(cell, size=size + 1)
    exists = props[cell, 0].astype(bool)
    labels = np.where(exists & ~membrane, ids[cell], 0)

    shade = props[cell, 1]
    texture = 0.06 * _smooth_field(seed, 3, ys, xs, 0.5 * style.cell_radius)
    image = np.where(exists, 0.35 + 0.2 * shade + texture, 0.18)
    image = np.where(membrane, 0.95, image)
    image = ndimage.gaussian_filter(image, sigma=0.8)
    illumination = 0.75 + 0.25 * _smooth_field(seed, 4, ys, xs, 40 * spacing)
    image = image * illumination
    rng = np.random.default_rng([seed & 0xFFFFFFFF, y0 + 2**31, x0 + 2**31, 104729])
    image = image + rng.normal(0.0, style.noise, size=image.shape)

    crop = (slice(halo, halo + height), slice(halo, halo + width))
    return image[crop].astype(np.float32), labels[crop]


def make_dataset(n_images: int, size: int, seed: int, style: CellStyle = CellStyle()) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_images`` independent (image (Y, X) float32, labels (Y, X) int32 consecutive ids) pairs."""
    pairs = []
    for index in range(n_images):
        image, labels = render_region(seed * 100003 + index, 0, 0, size, size, style)
        _, consecutive = np.unique(labels, return_inverse=True)
        consecutive = consecutive.reshape(labels.shape).astype(np.int32)
        if labels.min() != 0:  # no background pixel at all: ids must still start at 1
            consecutive += 1
        pairs.append((image, consecutive))
    return pairs


def write_giant_slide(path: str | Path, size: int, chunk: int, seed: int, style: CellStyle = CellStyle()) -> Path:
    """Stream a ``size`` x ``size`` synthetic slide into a raw zarr v3 array, one chunk at a time.

    The array (float32, shape (1, size, size)) is what a scanner export converted to zarr looks
    like; the ingest stage then stores it like any other zarr source. Peak memory is a few
    chunks, whatever ``size`` is.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        array = zarr.create_array(
            str(tmp), shape=(1, size, size), chunks=(1, chunk, chunk), dtype="float32", fill_value=0.0, zarr_format=3
        )
        array.attrs["unetflow_synthetic"] = {"seed": seed, "size": size, "style": style.__dict__}
        origins = [(y, x) for y in range(0, size, chunk) for x in range(0, size, chunk)]
        for y, x in tqdm(origins, desc="synthetic slide", unit="chunk"):
            h, w = min(chunk, size - y), min(chunk, size - x)
            image, _ = render_region(seed, y, x, h, w, style)
            array[0, y : y + h, x : x + w] = image
    return path
