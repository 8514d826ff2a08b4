"""Physical pixel sizes and axes: read from OME-TIFF, ImageJ TIFF and OME-Zarr inputs, honoured by
the lazy readers, stored at ingest, overridable in the config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from unetflow.config import stage_settings
from unetflow.ingest import ingest_dataset, ingest_slide
from unetflow.io.errors import InputError
from unetflow.io.pixel_size import PixelSize, ngff_unit
from unetflow.io.tiff_metadata import file_pixel_size, tiff_pixel_size
from unetflow.io.sources import open_tiff_lazily, open_zarr_image, zarr_pixel_size
from unetflow.store import image_pixel_size, open_store

RNG = np.random.default_rng(0)


def _ome_tiff(path: Path, data: np.ndarray, axes: str, **sizes: object) -> Path:
    tifffile.imwrite(path, data, ome=True, metadata={"axes": axes, **sizes})
    return path


def _ome_zarr(path: Path, data: np.ndarray, axes: str, scale: list[float], unit: str | None) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    axes_meta = [{"name": a, "type": "channel" if a == "c" else "space"} for a in axes]
    for axis in axes_meta:
        if axis["type"] == "space" and unit:
            axis["unit"] = unit
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes_meta, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}
    root.create_array("0", data=data, chunks=data.shape)
    return path


# -- reading sizes ---------------------------------------------------------------------------------
def test_ome_tiff_size_and_unit(tmp_path: Path) -> None:
    path = _ome_tiff(tmp_path / "a.ome.tif", RNG.random((20, 30), dtype=np.float32), "YX",
                     PhysicalSizeX=0.25, PhysicalSizeY=0.5, PhysicalSizeXUnit="nm", PhysicalSizeYUnit="nm")
    assert tiff_pixel_size(path) == PixelSize(0.5, 0.25, "nanometer")
    default_unit = _ome_tiff(tmp_path / "b.ome.tif", np.zeros((8, 8), np.uint8), "YX", PhysicalSizeX=2, PhysicalSizeY=2)
    assert tiff_pixel_size(default_unit) == PixelSize(2.0, 2.0, "micrometer")  # OME's default unit is µm


def test_imagej_resolution_in_its_unit_and_plain_dpi_ignored(tmp_path: Path) -> None:
    imagej = tmp_path / "ij.tif"
    tifffile.imwrite(imagej, np.zeros((8, 8), np.uint8), imagej=True, resolution=(1 / 0.65, 1 / 0.325),
                     metadata={"unit": "micron"})
    size = tiff_pixel_size(imagej)
    assert size is not None and size.unit == "micrometer"
    assert (size.y, size.x) == pytest.approx((0.325, 0.65), rel=1e-6)
    pixels = tmp_path / "px.tif"
    tifffile.imwrite(pixels, np.zeros((8, 8), np.uint8), imagej=True, resolution=(1.0, 1.0), metadata={"unit": "pixel"})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint8), resolution=(72, 72))
    assert tiff_pixel_size(pixels) is None and tiff_pixel_size(plain) is None  # no length / a display dpi
    assert file_pixel_size(tmp_path / "a.png") is None


def test_unit_spellings() -> None:
    assert [ngff_unit(u) for u in ("µm", "μm", "um", "micron", "\\u00B5m", "NM", "mm", "pixel", None)] == [
        "micrometer", "micrometer", "micrometer", "micrometer", "micrometer", "nanometer", "millimeter", None, None
    ]


def test_schema_units_are_the_ngff_units() -> None:
    from unetflow.config import load_schema
    from unetflow.io.pixel_size import NGFF_SPACE_UNITS

    schema = load_schema()["properties"]["dataset"]["properties"]["pixel_size"]["properties"]["unit"]
    assert schema["enum"] == list(NGFF_SPACE_UNITS)


def test_ome_zarr_scale_times_multiscale_scale(tmp_path: Path) -> None:
    path = _ome_zarr(tmp_path / "a.ome.zarr", np.zeros((1, 16, 16), np.float32), "cyx", [1.0, 0.4, 0.3], "micrometer")
    assert zarr_pixel_size(path) == PixelSize(0.4, 0.3, "micrometer")
    no_unit = _ome_zarr(tmp_path / "b.ome.zarr", np.zeros((16, 16), np.float32), "yx", [0.4, 0.3], None)
    assert zarr_pixel_size(no_unit) is None


# -- axes ------------------------------------------------------------------------------------------
def test_tiff_axes_decide_the_layout(tmp_path: Path) -> None:
    zcyx = RNG.random((1, 2, 20, 30), dtype=np.float32)
    np.testing.assert_array_equal(open_tiff_lazily(_ome_tiff(tmp_path / "z1.ome.tif", zcyx, "ZCYX")).compute(), zcyx[0])
    rgb = RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(open_tiff_lazily(tmp_path / "rgb.tif").compute(), rgb.transpose(2, 0, 1))
    grey = RNG.random((20, 30), dtype=np.float32)
    np.testing.assert_array_equal(open_tiff_lazily(_ome_tiff(tmp_path / "g.ome.tif", grey, "YX")).compute(), grey)


@pytest.mark.parametrize("axes,shape", [("ZCYX", (3, 2, 20, 30)), ("TYX", (4, 20, 30))])
def test_tiff_stacks_and_time_lapses_are_refused(tmp_path: Path, axes: str, shape: tuple) -> None:
    path = _ome_tiff(tmp_path / "s.ome.tif", np.zeros(shape, np.uint8), axes)
    with pytest.raises(InputError, match=r"3-D/time-lapse input.*axes .*Y.*select a plane/frame first") as err:
        open_tiff_lazily(path)
    assert str(path) in str(err.value)


def test_ome_zarr_axes_decide_the_layout(tmp_path: Path) -> None:
    czyx = RNG.random((2, 1, 16, 24), dtype=np.float32)
    path = _ome_zarr(tmp_path / "a.ome.zarr", czyx, "czyx", [1, 1, 1, 1], None)
    np.testing.assert_array_equal(open_zarr_image(path).compute(), czyx[:, 0])
    deep = _ome_zarr(tmp_path / "d.ome.zarr", np.zeros((1, 3, 16, 24), np.float32), "czyx", [1, 1, 1, 1], None)
    with pytest.raises(InputError, match="3-D/time-lapse input"):
        open_zarr_image(deep)  # a shape guess would have read the 3 planes as channels
    yxc = zarr.create_array(str(tmp_path / "yxc.zarr"), shape=(16, 24, 3), dtype="uint8", dimension_names=["y", "x", "c"])
    assert open_zarr_image(tmp_path / "yxc.zarr").shape == (3, 16, 24)
    assert yxc is not None


# -- ingest ----------------------------------------------------------------------------------------
def test_slide_store_records_the_file_size_or_the_configured_one(tmp_path: Path) -> None:
    path = _ome_tiff(tmp_path / "s.ome.tif", RNG.random((1, 1, 64, 80), dtype=np.float32), "TCYX",
                     PhysicalSizeX=0.25, PhysicalSizeY=0.25)
    slide = {"name": "s", "format": "tiff", "path": str(path), "chunk": 64}
    store = ingest_slide(slide, 1, "luminance", tmp_path / "s.zarr")
    assert image_pixel_size(open_store(store), "s") == {"y": 0.25, "x": 0.25, "unit": "micrometer"}
    override = {**slide, "pixel_size": {"y": 1.0, "x": 1.0, "unit": "nanometer"}}
    store = ingest_slide(override, 1, "luminance", tmp_path / "o.zarr")
    assert image_pixel_size(open_store(store), "s") == {"y": 1.0, "x": 1.0, "unit": "nanometer"}


def test_dataset_store_records_sizes_per_image(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    label = np.zeros((32, 32), np.uint8)
    label[4:12, 4:12] = 255
    for i, size in enumerate((0.5, 0.8)):
        _ome_tiff(tmp_path / "image" / f"{i}.tif", RNG.random((32, 32), dtype=np.float32), "YX",
                  PhysicalSizeX=size, PhysicalSizeY=size)
        tifffile.imwrite(tmp_path / "label" / f"{i}.tif", label)
    settings = stage_settings("dataset", json.dumps({
        "format": "pairs", "path": str(tmp_path), "image_glob": "image/*.tif", "label_glob": "label/*.tif",
        "split": {"val_fraction": 0.0, "seed": 0}}))
    group = open_store(ingest_dataset(settings, tmp_path / "d.zarr"))
    assert [image_pixel_size(group, n)["x"] for n in ("0", "1")] == [0.5, 0.8]
    settings["pixel_size"] = {"y": 0.1, "x": 0.1}  # the configured size wins, unit micrometer by default
    group = open_store(ingest_dataset(settings, tmp_path / "o.zarr"))
    assert image_pixel_size(group, "1") == {"y": 0.1, "x": 0.1, "unit": "micrometer"}
