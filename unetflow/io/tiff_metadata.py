"""Physical pixel sizes recorded in TIFF files (see ``unetflow.io.pixel_size`` for their journey).

* OME-TIFF: OME-XML ``Pixels/@PhysicalSizeX|Y`` and ``@PhysicalSizeX|YUnit`` (default µm);
* ImageJ TIFF: the ``XResolution``/``YResolution`` tags (pixels per unit) in ImageJ's ``unit``.

Plain TIFF resolution tags without ImageJ or OME metadata are ignored: most writers fill them
with a display resolution (72 dpi), which is not a physical pixel size.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import tifffile

from unetflow.io.pixel_size import PixelSize, ngff_unit


def _ome_xml_size(xml: str) -> PixelSize | None:
    """PhysicalSizeY/X of the first image of an OME-XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rpartition("}")[2] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    unit_x = ngff_unit(pixels.get("PhysicalSizeXUnit", "µm"))
    unit_y = ngff_unit(pixels.get("PhysicalSizeYUnit", "µm"))
    if unit_x is None or unit_x != unit_y:
        return None
    return PixelSize(float(pixels.get("PhysicalSizeY")), float(pixels.get("PhysicalSizeX")), unit_x)


def _imagej_size(tif: tifffile.TiffFile) -> PixelSize | None:
    """ImageJ's pixel size: the resolution tags (pixels per unit) in ImageJ's ``unit``."""
    unit = ngff_unit((tif.imagej_metadata or {}).get("unit"))
    tags = tif.pages.first.tags
    if unit is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if not (xn and xd and yn and yd):
        return None
    return PixelSize(yd / yn, xd / xn, unit)


def tiff_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size an OME-TIFF or ImageJ TIFF records (None for other TIFFs, see the module doc)."""
    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            return _ome_xml_size(tif.ome_metadata)
        if tif.is_imagej:
            return _imagej_size(tif)
    return None


def file_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size of an image file: TIFFs may record one, PNG/JPEG are taken to have none."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    return tiff_pixel_size(path)
