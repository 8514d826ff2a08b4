"""OME-TIFF export of a prediction, for viewers whose OME-Zarr support lags (QuPath, Fiji).

``<name>.ome.tif`` holds the prediction's three images as three OME series, each a tiled BigTIFF
pyramid (the OME-Zarr levels as SubIFDs, the layout QuPath and Bio-Formats read as a pyramid):

    series 0 "probabilities"  float32 (C, Y, X), one channel per class, named like the classes
    series 1 "semantic"       uint8 (Y, X), the argmax class
    series 2 "instances"      int32 (Y, X), object ids (QuPath: import as a labelled image)

Labels are separate images rather than extra channels, because a viewer then keeps them apart
(no float/int mix in one image) and QuPath can open each series on its own. Float16
probabilities are written as float32: OME has no 16-bit float pixel type. The physical pixel
size of the OME-Zarr (``PhysicalSizeX/Y`` and their unit) goes into the OME-XML.

The file is written tile by tile from the zarr levels, one band of tiles (``TILE`` rows, the
full width, one channel) in memory at a time, so a whole-slide prediction never has to fit in
memory; it is assembled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from unetflow.io.ome_zarr import class_names, ome_tiff_path, open_ome_image
from unetflow.io.pixel_size import PixelSize

TILE = 512  # QuPath's and Bio-Formats' usual tile edge (TIFF tiles must be multiples of 16)
#: (series name, NGFF label image or None for the probabilities, stored type)
SERIES = (("probabilities", None, "float32"), ("semantic", "semantic", "uint8"), ("instances", "instances", "int32"))
#: OME-XML's symbols (UnitsLength) of the NGFF length units
OME_UNIT_SYMBOLS = {
    "yottameter": "Ym", "zettameter": "Zm", "exameter": "Em", "petameter": "Pm", "terameter": "Tm",
    "gigameter": "Gm", "megameter": "Mm", "kilometer": "km", "hectometer": "hm", "meter": "m",
    "decimeter": "dm", "centimeter": "cm", "millimeter": "mm", "micrometer": "µm", "nanometer": "nm",
    "picometer": "pm", "femtometer": "fm", "attometer": "am", "zeptometer": "zm", "yoctometer": "ym",
    "angstrom": "Å", "inch": "in", "foot": "ft", "yard": "yd", "mile": "mi", "parsec": "pc",
}


def _tiles(array: zarr.Array, dtype: str) -> Iterator[np.ndarray]:
    """The tiles of a (Y, X) or (C, Y, X) array in TIFF order: plane by plane, row by row."""
    planes = array.shape[0] if array.ndim == 3 else 1
    height, width = array.shape[-2:]
    for plane in range(planes):
        for y0 in range(0, height, TILE):
            band = array[plane, y0 : y0 + TILE] if array.ndim == 3 else array[y0 : y0 + TILE]
            band = band.astype(dtype, copy=False)
            for x0 in range(0, width, TILE):
                yield np.ascontiguousarray(band[:, x0 : x0 + TILE])  # tifffile zero-pads edge tiles


def _ome_metadata(name: str, axes: str, pixel_size: PixelSize | None, channels: list[str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"axes": axes, "Name": name}
    if pixel_size is not None:
        unit = OME_UNIT_SYMBOLS[pixel_size.unit]
        meta.update(PhysicalSizeX=pixel_size.x, PhysicalSizeY=pixel_size.y, PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    if channels:
        meta["Channel"] = {"Name": channels}
    return meta


def write_ome_tiff(prediction: str | Path, out: str | Path | None = None) -> Path:
    """Write the OME-TIFF of the OME-Zarr ``prediction`` (default: ``ome_tiff_path(prediction)``)."""
    image = open_ome_image(prediction)
    out = Path(out) if out is not None else ome_tiff_path(prediction)
    tmp = out.with_name(f".{out.name}.tmp")
    n_classes = image.levels[0].shape[0]
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for name, label, dtype in SERIES:
            levels = (image.label(label) if label else image).levels
            channels = class_names(n_classes) if label is None else None
            axes = "CYX" if label is None else "YX"
            for level, array in enumerate(levels):
                options: dict[str, Any] = {"tile": (TILE, TILE), "compression": "zlib", "dtype": dtype, "shape": array.shape}
                if level == 0:
                    options.update(subifds=len(levels) - 1, metadata=_ome_metadata(name, axes, image.pixel_size, channels))
                else:
                    options.update(subfiletype=1, metadata=None)  # a reduced-resolution SubIFD of level 0
                tif.write(_tiles(array, dtype), **options)
    os.replace(tmp, out)
    return out
