"""OME-Zarr (NGFF 0.5, zarr v3) prediction images: layout, metadata, pyramids, instance labels.

A prediction is one NGFF image group::

    <name>.ome.zarr/
        0, 1, ...                  class probabilities (C, Y, X), level k downsampled 2**k
        labels/semantic/0, 1, ...  uint8 (Y, X) argmax class
        labels/instances/0, 1, ... int32 (Y, X) objects by the model's ``InstanceRule``: seeds
                                   (confident class 1: the objects of a 2-class model, the
                                   interiors of a 3-class one) grown through the foreground for
                                   a 3-class model, objects below min_size removed
        attrs: {"ome": {version, multiscales}, "unetflow": {kind: "prediction", ...}}

Everything here works chunk by chunk on arrays that may be far larger than memory: pyramid
levels are computed one output chunk at a time from the level above (the instance labels are
``unetflow.io.chunked_instances``). These steps are returned as ``dask.delayed`` graphs that the
caller joins to the prediction graph and computes on its scheduler; the chunk functions take
store paths, not open arrays, so they run unchanged in dask.distributed workers. They read and write
through ``unetflow.io.chunk_memo``, so a chunk written earlier in the same run and process comes
from memory rather than being decoded again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from dask.delayed import Delayed
from zarr.codecs import BloscCodec

from unetflow.io.chunk_memo import open_array, read_region, write_chunk
from unetflow.io.pixel_size import PixelSize, multiscale_pixel_size
from unetflow.io.task_order import task_after
from unetflow.store import ATTRS_KEY, StoreError, checked_codecs, open_group_readonly
from unetflow.tiling import Box, ChunkGrid, assemble, chunks_under

NGFF_VERSION = "0.5"
LABELS = "labels"
SEMANTIC = f"{LABELS}/semantic"
INSTANCES = f"{LABELS}/instances"
PROBABILITIES = ""  # the probability pyramid lives at the image group's root, as NGFF requires

#: how each multiscale is downsampled: probabilities are averaged, label ids must stay ids
DOWNSAMPLING = {PROBABILITIES: "mean", SEMANTIC: "stride", INSTANCES: "stride"}

#: display colours of the semantic classes (RGBA); background is transparent
CLASS_COLOURS = [(0, 0, 0, 0), (0, 200, 0, 128), (220, 0, 0, 128), (0, 80, 255, 128), (255, 200, 0, 128)]

#: probabilities are noisy floats: lz4 on byte-shuffled values compresses them better than
#: zarr's default zstd and at about twice its speed (labels keep zstd, which suits them)
PROBABILITY_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")

SEEDS = "seeds"  # scratch array of a prediction whose seeds grow: their final ids before growth


def ome_tiff_path(prediction: str | Path) -> Path:
    """``<name>.ome.tif``, the OME-TIFF export (``unetflow.io.ome_tiff``) beside ``<name>.ome.zarr``."""
    prediction = Path(prediction)
    return prediction.with_name(prediction.name.removesuffix(".ome.zarr") + ".ome.tif")


def level_path(multiscale: str, level: int) -> str:
    """Path of pyramid ``level`` of a multiscale group inside the image group."""
    return f"{multiscale}/{level}" if multiscale else str(level)


def level_grids(height: int, width: int, chunk: int, levels: int) -> list[ChunkGrid]:
    """Chunk grids of the pyramid levels: each level halves the edges (rounding up)."""
    grids = [ChunkGrid(height, width, chunk)]
    for _ in range(levels - 1):
        grids.append(grids[-1].halved())
    return grids


def _multiscales(
    name: str, axes: Sequence[str], levels: int, downsampling: str, pixel_size: PixelSize | None
) -> list[dict[str, Any]]:
    """NGFF ``multiscales`` metadata: one dataset per level with its scale (and shift).

    Scales are physical (``pixel_size``, its unit on the space axes) when the input's pixel size
    is known, else in input pixels. A mean over 2**k x 2**k pixels sits at the centre of those
    pixels, so averaged levels are shifted by (2**k - 1) / 2 level-0 pixels; strided levels keep
    the top-left pixel, unshifted.
    """
    size = {"y": pixel_size.y, "x": pixel_size.x} if pixel_size else {"y": 1.0, "x": 1.0}
    axes_meta: list[dict[str, Any]] = []
    for a in axes:
        axis = {"name": a, "type": "channel" if a == "c" else "space"}
        if a != "c" and pixel_size:
            axis["unit"] = pixel_size.unit
        axes_meta.append(axis)
    datasets = []
    for level in range(levels):
        scale = [1.0 if a == "c" else size[a] * 2**level for a in axes]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if downsampling == "mean" and level:
            shift = [0.0 if a == "c" else size[a] * (2**level - 1) / 2 for a in axes]
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return [
        {
            "name": name,
            "axes": axes_meta,
            "datasets": datasets,
            "type": downsampling,
            "metadata": {"description": f"2x2 {downsampling} downsampling per level, computed chunk-wise"},
        }
    ]


def class_names(n_classes: int) -> list[str]:
    """Names of a model's classes (``unetflow.targets``: binary, or boundary with 3 classes)."""
    names = ["background", "object", "boundary"] if n_classes == 3 else ["background", "object"]
    return names if n_classes <= 3 else [f"class {i}" for i in range(n_classes)]


def _omero(n_classes: int) -> dict[str, Any]:
    """NGFF ``omero`` display metadata: one channel per class, its colour, probabilities 0..1."""
    channels = []
    for i, name in enumerate(class_names(n_classes)):
        r, g, b, _ = CLASS_COLOURS[i % len(CLASS_COLOURS)] if i else (128, 128, 128, 0)  # background grey
        channels.append({
            "label": name,
            "color": f"{r:02X}{g:02X}{b:02X}",
            "active": i > 0,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
            "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0},
        })
    return {"channels": channels, "rdefs": {"model": "color"}}


def create_prediction(
    path: str | Path,
    *,
    n_classes: int,
    height: int,
    width: int,
    chunk: int,
    levels: int,
    dtype: str,
    attrs: dict[str, Any],
    seeds: bool = False,
    pixel_size: PixelSize | None = None,
) -> zarr.Group:
    """Create an empty prediction image (all arrays, all NGFF metadata) at ``path``.

    Arrays are chunked ``chunk`` x ``chunk`` (all classes in one chunk), which is also the unit
    of work of the writers, so concurrent writers never share a stored chunk. ``seeds`` adds the
    scratch array ``SEEDS`` that ``instance_labels(grow > 0)`` needs (removed by the caller once
    the prediction is complete). ``pixel_size`` (the input's) makes every scale physical.
    """
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    grids = level_grids(height, width, chunk, levels)
    root.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales("probabilities", ("c", "y", "x"), levels, DOWNSAMPLING[PROBABILITIES], pixel_size),
        "omero": _omero(n_classes),
    }
    root.attrs[ATTRS_KEY] = attrs
    for level, grid in enumerate(grids):
        root.create_array(
            level_path(PROBABILITIES, level),
            shape=(n_classes, grid.height, grid.width),
            chunks=(n_classes, chunk, chunk),
            dtype=dtype,
            fill_value=0.0,
            compressors=checked_codecs(PROBABILITY_CODEC),
            dimension_names=["c", "y", "x"],
        )
    if seeds:
        root.create_array(
            SEEDS, shape=(height, width), chunks=(chunk, chunk), dtype="int32", fill_value=0, compressors=checked_codecs()
        )
    labels = root.create_group(LABELS)
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": ["semantic", "instances"]}
    for multiscale, label_dtype, colours in (
        (SEMANTIC, "uint8", CLASS_COLOURS[: max(n_classes, 1)]),
        (INSTANCES, "int32", CLASS_COLOURS[:1]),
    ):
        group = root.create_group(multiscale)
        group.attrs["ome"] = {
            "version": NGFF_VERSION,
            "multiscales": _multiscales(
                multiscale.split("/")[-1], ("y", "x"), levels, DOWNSAMPLING[multiscale], pixel_size
            ),
            "image-label": {  # NGFF 0.5: the version lives in "ome" only
                "colors": [{"label-value": i, "rgba": list(c)} for i, c in enumerate(colours)],
                "source": {"image": "../../"},
            },
        }
        for level, grid in enumerate(grids):
            group.create_array(
                str(level),
                shape=(grid.height, grid.width),
                chunks=(chunk, chunk),
                dtype=label_dtype,
                fill_value=0,
                compressors=checked_codecs(),
                dimension_names=["y", "x"],
            )
    return root


# -- pyramids ------------------------------------------------------------------------------------
def downsample(block: np.ndarray, mode: str) -> np.ndarray:
    """2x downsampling of the last two axes; odd edges round up.

    ``mean`` averages each 2x2 cell (edge cells of odd images average the pixels they have, by
    replicating the edge); ``stride`` keeps the top-left pixel, so label ids stay valid ids.
    """
    if mode == "stride":
        return block[..., ::2, ::2]
    if mode != "mean":
        raise ValueError(f"unknown downsampling {mode!r}")
    h, w = block.shape[-2:]
    data = block.astype("float32", copy=False)
    if h % 2 or w % 2:
        data = np.pad(data, [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)], mode="edge")
    return (data[..., 0::2, 0::2] + data[..., 1::2, 0::2] + data[..., 0::2, 1::2] + data[..., 1::2, 1::2]) * 0.25


def downsample_chunk(root: str, multiscale: str, level: int, region: Box) -> None:
    """Write ``region`` of pyramid ``level`` from the 2x larger region of ``level - 1``.

    With even source chunks each one is downsampled on its own into its part of the region
    (``downsample``'s cells never straddle them), so the source block is never assembled: a
    copy of four chunks saved, the largest part of a probability chunk's pyramid work.
    """
    source = level_path(multiscale, level - 1)
    array = open_array(root, source)
    src_h, src_w = array.shape[-2:]
    y0, x0 = 2 * region.y0, 2 * region.x0
    block = Box(y0, x0, min(2 * region.height, src_h - y0), min(2 * region.width, src_w - x0))
    mode = DOWNSAMPLING[multiscale]
    if any(edge % 2 for edge in array.chunks[-2:]):
        halved = downsample(read_region(root, source, block), mode)
    else:
        parts = [
            (Box(box.y0 // 2, box.x0 // 2, -(-box.height // 2), -(-box.width // 2)), downsample(read_region(root, source, box), mode))
            for box in chunks_under(block, array.shape, array.chunks)
        ]
        halved = assemble(region, parts)
    write_chunk(root, level_path(multiscale, level), region, halved)


def pyramid(root: str | Path, multiscale: str, after: Mapping[tuple[int, int], Delayed]) -> list[Delayed]:
    """Tasks filling levels 1.. of one multiscale from its level 0.

    ``after[index]`` is the task still to write level-0 chunk ``index`` (absent: written). A chunk
    of level k covers 2x2 chunks of level k-1 (all levels share the chunk edge) and waits only for
    those, so downsampling runs while other chunks are still being predicted.
    """
    root = str(root)
    semantic = open_array(root, level_path(SEMANTIC, 0))
    levels = len(zarr.open_group(root, mode="r").attrs["ome"]["multiscales"][0]["datasets"])
    grids = level_grids(*semantic.shape, semantic.chunks[-1], levels)
    above: Mapping[tuple[int, int], Delayed] = after
    tasks: list[Delayed] = []
    for level in range(1, len(grids)):
        current = {}
        for (iy, ix), box in grids[level]:
            covered = [(2 * iy + dy, 2 * ix + dx) for dy in (0, 1) for dx in (0, 1)]
            parents = [above[index] for index in covered if index in above]
            current[(iy, ix)] = task_after(downsample_chunk, root, multiscale, level, box, after=parents)
        tasks.extend(current.values())
        above = current
    return tasks


# -- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OmeImage:
    """An opened NGFF multiscale image: its levels (largest first), axis names and scales."""

    group: zarr.Group
    levels: list[zarr.Array]
    axes: list[str]
    scales: list[list[float]]
    pixel_size: PixelSize | None  # physical size of a level-0 pixel, if the image records one

    @property
    def attrs(self) -> dict[str, Any]:
        """The unetflow attributes (empty for images written by others)."""
        return dict(self.group.attrs.get(ATTRS_KEY, {}))

    def label_names(self) -> list[str]:
        """Names of the NGFF label images of this image."""
        if LABELS not in self.group:
            return []
        return list(self.group[LABELS].attrs.get("ome", {}).get("labels", []))

    def label(self, name: str) -> OmeImage:
        """The NGFF label image ``name`` (e.g. ``semantic`` or ``instances``)."""
        if name not in self.label_names():
            raise StoreError(f"{self.group.store}: no label image {name!r}; found {self.label_names()}")
        return _read_multiscale(self.group[f"{LABELS}/{name}"], f"{self.group.store}/{LABELS}/{name}")


def _read_multiscale(group: zarr.Group, where: str) -> OmeImage:
    ome = group.attrs.get("ome")
    if not isinstance(ome, dict) or "multiscales" not in ome:
        raise StoreError(f"{where}: not an OME-Zarr image (no 'ome.multiscales' attributes)")
    if ome.get("version") != NGFF_VERSION:
        raise StoreError(f"{where}: OME-Zarr version {ome.get('version')!r}, expected {NGFF_VERSION!r}")
    multiscale = ome["multiscales"][0]
    datasets = multiscale["datasets"]
    scales = [next(t["scale"] for t in d["coordinateTransformations"] if t["type"] == "scale") for d in datasets]
    return OmeImage(
        group=group,
        levels=[group[d["path"]] for d in datasets],
        axes=[a["name"] for a in multiscale["axes"]],
        scales=scales,
        pixel_size=multiscale_pixel_size(multiscale),
    )


def open_ome_image(path: str | Path) -> OmeImage:
    """Open an NGFF 0.5 image group read-only (a prediction, or any OME-Zarr 0.5 image)."""
    return _read_multiscale(open_group_readonly(path), str(path))
