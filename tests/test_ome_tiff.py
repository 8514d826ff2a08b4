"""OME-TIFF export: the prediction's images as tiled pyramids that read back equal, lazily, with
the input's pixel size (the route to QuPath and Fiji)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from unetflow.cli import main
from unetflow.ingest import ingest_slide
from unetflow.io.ome_tiff import TILE, write_ome_tiff
from unetflow.io.ome_zarr import create_prediction, ome_tiff_path, open_ome_image
from unetflow.io.pixel_size import PixelSize
from unetflow.io.tiff_metadata import tiff_pixel_size
from unetflow.model import UNet, save_checkpoint
from unetflow.normalize import Normalization
from unetflow.predict import PredictOptions

from ngff import assert_valid_ngff


def _lazy(path: Path, series: int, level: int) -> zarr.Array:
    """One series/level of the OME-TIFF through tifffile's zarr interface (tiles read on access)."""
    return zarr.open(tifffile.imread(path, aszarr=True, series=series, level=level), mode="r")


def test_export_reads_back_equal_per_series_and_level(tmp_path: Path) -> None:
    size = PixelSize(0.5, 0.25, "nanometer")
    prediction = tmp_path / "p.ome.zarr"
    root = create_prediction(prediction, n_classes=3, height=TILE + 188, width=2 * TILE + 9, chunk=256, levels=3,
                             dtype="float16", attrs={}, pixel_size=size)
    rng = np.random.default_rng(0)
    for level in range(3):  # any content: the export must copy it exactly
        for path, values in (("", "probs"), ("labels/semantic/", "classes"), ("labels/instances/", "ids")):
            array = root[f"{path}{level}"]
            array[...] = {"probs": lambda s: rng.random(s), "classes": lambda s: rng.integers(0, 3, s),
                          "ids": lambda s: rng.integers(0, 2**31 - 1, s)}[values](array.shape)
    out = write_ome_tiff(prediction)
    assert out == tmp_path / "p.ome.tif" == ome_tiff_path(prediction)
    with tifffile.TiffFile(out) as tif:
        assert [s.name for s in tif.series] == ["probabilities", "semantic", "instances"]
        assert all(len(s.levels) == 3 for s in tif.series) and tif.pages.first.is_tiled
        assert tif.pages.first.tilewidth == TILE and tif.is_ome
        assert "Name=\"boundary\"" in tif.ome_metadata
    assert tiff_pixel_size(out) == size
    for series, path, dtype in ((0, "", "float32"), (1, "labels/semantic/", "uint8"), (2, "labels/instances/", "int32")):
        for level in range(3):
            lazy = _lazy(out, series, level)
            assert lazy.dtype == dtype
            np.testing.assert_array_equal(lazy[...], root[f"{path}{level}"][...].astype(dtype))
    assert not list(tmp_path.glob(".*tmp"))


def test_slide_with_known_pixel_size_keeps_it_in_both_prediction_formats(tmp_path: Path) -> None:
    """An OME-TIFF slide of 0.3 µm pixels gives an OME-Zarr and an OME-TIFF prediction of 0.3 µm pixels."""
    rng = np.random.default_rng(1)
    slide_file = tmp_path / "slide.ome.tif"
    tifffile.imwrite(slide_file, rng.random((1, 150, 170), dtype=np.float32), ome=True, tile=(64, 64),
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeXUnit": "µm"})
    store = ingest_slide({"name": "s", "format": "tiff", "path": str(slide_file), "chunk": 64}, 1, "luminance",
                         tmp_path / "s.zarr")
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=2, depth=2, base_channels=4)
    save_checkpoint(tmp_path / "m.pt", net, normalization=Normalization("zscore", mean=(0.0,), std=(1.0,)).to_json())
    settings = json.dumps({"device": "cpu", "chunk": 64, "tile": 32, "ome_tiff": True})
    assert main(["predict", str(tmp_path / "m.pt"), str(store), str(tmp_path / "pred"), "--settings", settings]) == 0
    out = tmp_path / "pred"
    assert sorted(p.name for p in out.iterdir()) == ["s.ome.tif", "s.ome.zarr"]
    expected = PixelSize(0.3, 0.3, "micrometer")
    assert_valid_ngff(out / "s.ome.zarr")
    prediction = open_ome_image(out / "s.ome.zarr")
    assert prediction.pixel_size == expected and tiff_pixel_size(out / "s.ome.tif") == expected
    np.testing.assert_array_equal(_lazy(out / "s.ome.tif", 2, 0)[...], prediction.label("instances").levels[0][...])


def test_complete_prediction_without_its_export_is_exported_not_predicted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed between the OME-Zarr and its OME-TIFF (or resumed with ome_tiff turned on)
    exports the finished prediction instead of predicting it again."""
    import unetflow.predict as predict_module

    store = ingest_slide({"name": "s", "format": "synthetic", "size": 96, "chunk": 64, "seed": 0}, 1, "luminance",
                         tmp_path / "s.zarr")
    net = UNet(in_channels=1, n_classes=2, depth=2, base_channels=4)
    save_checkpoint(tmp_path / "m.pt", net, normalization=Normalization("zscore", mean=(0.0,), std=(1.0,)).to_json())
    settings = {"device": "cpu", "chunk": 64, "tile": 32}
    out = tmp_path / "s.ome.zarr"
    predict_module.predict_image(tmp_path / "m.pt", store, "s", out, PredictOptions.from_settings(settings))
    assert not ome_tiff_path(out).exists()
    monkeypatch.setattr(predict_module, "predict_chunk", lambda job: pytest.fail("predicted again"))
    options = PredictOptions.from_settings({**settings, "ome_tiff": True})
    predict_module.predict_image(tmp_path / "m.pt", store, "s", out, options, export=write_ome_tiff)
    np.testing.assert_array_equal(_lazy(ome_tiff_path(out), 0, 0)[...], open_ome_image(out).levels[0][...])
