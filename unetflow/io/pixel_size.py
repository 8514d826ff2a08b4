"""Physical pixel sizes: read from the input's metadata, carried through the stores to predictions.

A segmentation is only measurable (object areas in µm², distances, overlays in QuPath or napari
on top of the source) when it keeps the pixel size of its input. Sizes are read where microscopy
files keep them and stored in the ingest store, and predict writes them into the OME-Zarr
``coordinateTransformations`` and the OME-TIFF ``PhysicalSize``:

* OME-TIFF and ImageJ TIFF: ``unetflow.io.tiff_metadata`` (kept apart, so that the stages that
  only read stores do not need tifffile);
* OME-Zarr: the ``scale`` of level 0 (times any multiscale-wide scale) and the axes' ``unit``;
* the config (``dataset.pixel_size``, ``slides[].pixel_size``) for inputs without metadata, or
  to correct wrong metadata: a configured size wins over the file's.

Units are stored as the
UDUNITS-2 names NGFF requires (``micrometer``, not ``µm``); a unit that is no length (ImageJ's
``pixel``) means no physical size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

#: length units NGFF 0.5 allows on space axes (UDUNITS-2 names)
NGFF_SPACE_UNITS = (
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter",
    "nanometer", "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter",
    "zeptometer", "zettameter",
)
#: how OME-XML, ImageJ and people spell the common units
UNIT_ALIASES = {
    "µm": "micrometer", "μm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "micrometre": "micrometer", "\\u00b5m": "micrometer", "nm": "nanometer", "nanometre": "nanometer",
    "mm": "millimeter", "millimetre": "millimeter", "cm": "centimeter", "centimetre": "centimeter",
    "m": "meter", "metre": "meter", "pm": "picometer", "å": "angstrom", "in": "inch",
}


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF (UDUNITS-2) name of a length unit as files spell it, or None if it is no length."""
    if not unit:
        return None
    key = unit.strip().lower()
    key = UNIT_ALIASES.get(key, key)
    return key if key in NGFF_SPACE_UNITS else None


@dataclass(frozen=True)
class PixelSize:
    """The physical edge of one pixel along y and x, in ``unit`` (an NGFF space unit)."""

    y: float
    x: float
    unit: str

    def __post_init__(self) -> None:
        if not (self.y > 0 and self.x > 0) or self.unit not in NGFF_SPACE_UNITS:
            raise ValueError(f"pixel size needs y, x > 0 and an NGFF length unit, got {self}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> PixelSize | None:
        """The size stored by ``to_json`` (or a config's ``pixel_size``); None stays None."""
        if not data:
            return None
        return cls(float(data["y"]), float(data["x"]), str(data.get("unit", "micrometer")))  # the schema's documented default


def _scale(transforms: Sequence[Mapping[str, Any]] | None, ndim: int) -> list[float]:
    scale = next((t.get("scale") for t in transforms or [] if t.get("type") == "scale"), None)
    return [float(s) for s in scale] if scale else [1.0] * ndim


def multiscale_pixel_size(multiscale: Mapping[str, Any]) -> PixelSize | None:
    """The pixel size of level 0 of an NGFF multiscale: its scale along y and x, with the axes' unit."""
    names = [a["name"] for a in multiscale["axes"]]
    if "y" not in names or "x" not in names:
        return None
    units = {a["name"]: ngff_unit(a.get("unit")) for a in multiscale["axes"]}
    if units["y"] is None or units["y"] != units["x"]:
        return None
    scale = _scale(multiscale["datasets"][0].get("coordinateTransformations"), len(names))
    overall = _scale(multiscale.get("coordinateTransformations"), len(names))
    iy, ix = names.index("y"), names.index("x")
    return PixelSize(scale[iy] * overall[iy], scale[ix] * overall[ix], units["y"])


def chosen_pixel_size(configured: Mapping[str, Any] | None, found: PixelSize | None, source: Any) -> PixelSize | None:
    """The configured size when there is one (logged where it overrides the file's), else the file's."""
    wanted = PixelSize.from_json(configured)
    if wanted is None:
        return found
    if found is not None and found != wanted:
        log.warning("%s: configured pixel size %s replaces the file's %s", source, wanted, found)
    return wanted
