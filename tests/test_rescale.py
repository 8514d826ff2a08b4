"""Prediction at the model's object size (``unetflow.rescale``, ``predict.diameter``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.draw import disk

from unetflow.io.errors import InputError
from unetflow.io.ome_zarr import open_ome_image
from unetflow.model import UNet, save_checkpoint
from unetflow.normalize import Normalization
from unetflow.predict import PredictOptions, predict_image
from unetflow.rescale import (
    Nearest,
    ZoomedView,
    equivalent_diameter,
    estimate_zoom,
    object_areas,
    quantised_zoom,
    sample_regions,
)
from unetflow.store import write_dataset
from unetflow.tiling import Box

from test_predict import _image, _whole_image

MODEL_DIAMETER = 12.0


def _model(path: Path, depth: int = 2) -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=2, depth=depth, base_channels=4, padding="valid").eval()
    identity = Normalization("zscore", mean=(0.0,), std=(1.0,))
    recipe = {"object_size": {"n_objects": 10, "median_area": 113.0, "median_diameter": MODEL_DIAMETER}}
    save_checkpoint(path, net, normalization=identity.to_json(), recipe=recipe)
    return net


def _zoom(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """scipy's linear zoom with pixel areas aligned (grid_mode), clamped at the border: the reference."""
    factors = (1, shape[0] / image.shape[-2], shape[1] / image.shape[-1])
    return ndimage.zoom(image, factors, order=1, grid_mode=True, mode="nearest")


@pytest.mark.parametrize("zoom", [2.0, 0.5, 1.37, 0.8])
def test_zoomed_view_reads_what_scipy_zoom_computes(zoom: float) -> None:
    image = np.random.default_rng(0).normal(size=(2, 37, 29)).astype(np.float32)
    view = ZoomedView(image, zoom)
    assert view.shape == (2, round(37 * zoom), round(29 * zoom))
    whole = view[..., 0 : view.shape[1], 0 : view.shape[2]]
    np.testing.assert_allclose(whole, _zoom(image, view.shape[1:]), atol=1e-5)
    part = view[..., 3:9, 2:7]  # any window reads the same pixels as the whole
    np.testing.assert_array_equal(part, whole[:, 3:9, 2:7])


@pytest.mark.parametrize("diameter,shape", [(6.0, (61, 75)), (24.0, (150, 133)), (8.7, (67, 91))])
def test_zoomed_prediction_is_seamless_and_equals_zooming_the_whole_image(
    tmp_path: Path, diameter: float, shape: tuple[int, int]
) -> None:
    """Chunks of 64 at zoom 2, 0.5 and ~1.4 give the whole zoomed image's probabilities zoomed back."""
    net = _model(tmp_path / "m.pt")
    image = _image(*shape)
    store = write_dataset(tmp_path / "d.zarr", {"a": image}, split={"train": ["a"], "val": []}, chunk=64)
    options = PredictOptions.from_settings({"device": "cpu", "chunk": 64, "tile": 16, "precision": "fp32", "diameter": diameter})
    out = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", options)
    predicted = open_ome_image(out)
    probs = predicted.levels[0][:]
    zoom = MODEL_DIAMETER / diameter
    assert predicted.attrs["rescale"]["zoom"] == pytest.approx(zoom)
    zoomed = _zoom(image, (round(shape[0] * zoom), round(shape[1] * zoom)))
    reference = _zoom(_whole_image(net, zoomed, net.margin), shape)
    assert probs.shape == (2, *shape) and reference[1].std() > 1e-3
    assert np.abs(probs - reference).max() <= 1e-4


def test_a_diameter_too_far_from_the_models_is_refused(tmp_path: Path) -> None:
    _model(tmp_path / "m.pt")
    store = write_dataset(tmp_path / "d.zarr", {"a": _image(40, 40)}, split={"train": ["a"], "val": []}, chunk=64)
    options = PredictOptions.from_settings({"device": "cpu", "precision": "fp32", "diameter": 100.0})
    with pytest.raises(InputError, match="zoom of 0.12"):
        predict_image(tmp_path / "m.pt", store, "a", tmp_path / "a.ome.zarr", options)
    assert not (tmp_path / "a.ome.zarr").exists() and not list(tmp_path.glob("a.ome.zarr*"))


def test_auto_records_its_passes_and_predicts_at_the_zoom_it_chose(tmp_path: Path) -> None:
    """Whatever the (untrained) net finds, the output is the prediction at the recorded zoom."""
    _model(tmp_path / "m.pt")
    image = _image(70, 90)
    store = write_dataset(tmp_path / "d.zarr", {"a": image}, split={"train": ["a"], "val": []}, chunk=64)
    settings = {"device": "cpu", "chunk": 64, "tile": 16, "precision": "fp32"}
    auto = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "auto.ome.zarr", PredictOptions.from_settings({**settings, "diameter": "auto"}))
    rescale = open_ome_image(auto).attrs["rescale"]
    assert rescale["passes"][0]["zoom"] == 1.0 and rescale["model_diameter"] == MODEL_DIAMETER
    zoom = rescale["zoom"]
    assert zoom == quantised_zoom(zoom)
    if zoom == 1.0:
        given = PredictOptions.from_settings(settings)
    else:
        given = PredictOptions.from_settings({**settings, "diameter": MODEL_DIAMETER / zoom})
    fixed = predict_image(tmp_path / "m.pt", store, "a", tmp_path / "fixed.ome.zarr", given)
    np.testing.assert_allclose(open_ome_image(auto).levels[0][:], open_ome_image(fixed).levels[0][:], atol=1e-5)


def _discs(diameter: float, shape: tuple[int, int] = (200, 200), spacing: int = 50) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for i, (y, x) in enumerate((y, x) for y in range(spacing // 2, shape[0], spacing) for x in range(spacing // 2, shape[1], spacing)):
        labels[disk((y, x), diameter / 2, shape=shape)] = i + 1
    return labels


def test_estimate_finds_the_zoom_of_objects_sized_by_a_perfect_segmenter() -> None:
    """Discs of 24 px against a model of 12 px: zoom 0.5, measured at 1 and then at 0.5."""
    labels = _discs(24)
    seen: list[float] = []

    def objects(region: Box, zoom: float) -> np.ndarray:
        seen.append(zoom)
        return labels[region.slices]

    estimate = estimate_zoom(objects, sample_regions(200, 200, 100), MODEL_DIAMETER)
    assert estimate.zoom == 0.5
    assert [p[0] for p in estimate.passes] == [1.0, 0.5] and set(seen) == {1.0, 0.5}
    assert estimate.passes[0][1] == pytest.approx(24, rel=0.05)


def test_estimate_keeps_the_native_size_near_the_models_and_without_objects() -> None:
    near = _discs(12.6)  # ~5 % larger than the model's objects: within an eighth of an octave
    assert estimate_zoom(lambda region, zoom: near[region.slices], [Box(0, 0, 200, 200)], MODEL_DIAMETER).zoom == 1.0
    empty = np.zeros((50, 50), dtype=np.int32)
    estimate = estimate_zoom(lambda region, zoom: empty, [Box(0, 0, 50, 50)], MODEL_DIAMETER)
    assert estimate.zoom == 1.0 and estimate.passes == [(1.0, None)]


def test_quantised_zoom_rounds_to_quarter_octaves_within_range() -> None:
    assert quantised_zoom(1.05) == 1.0
    assert quantised_zoom(2.1) == 2.0
    assert quantised_zoom(1.45) == pytest.approx(2 ** 0.5)
    assert quantised_zoom(40.0) == 4.0 and quantised_zoom(0.01) == 0.25


def test_object_areas_leave_out_objects_cut_by_the_border() -> None:
    labels = np.zeros((30, 30), dtype=np.int32)
    labels[0:5, 0:5] = 1  # touches the border
    labels[10:14, 10:14] = 2
    labels[20:23, 20:25] = 3
    assert sorted(object_areas(labels)) == [15.0, 16.0]
    only_cut = np.zeros((10, 10), dtype=np.int32)
    only_cut[0:3, 0:3] = 1
    assert list(object_areas(only_cut)) == [9.0]
    assert equivalent_diameter(np.pi * 25) == pytest.approx(10.0)


def test_sample_regions_spread_over_a_large_image() -> None:
    assert len(sample_regions(300, 300, 100)) == 9
    picked = sample_regions(4000, 4000, 100)
    assert len(picked) == 16 and picked[0] == Box(0, 0, 100, 100) and picked[-1] == Box(3900, 3900, 100, 100)


def test_training_objects_record_the_typical_diameter_that_auto_measures() -> None:
    """Per image, the object holding the median object pixel; over images, the median: specks and
    a large-object image do not move it the way they move the median of all objects."""
    from unetflow.weighting import object_sizes

    small, large, other = _discs(10), _discs(30), _discs(12)
    specks = small.copy()
    for i, y in enumerate(range(3, 200, 7)):
        specks[y, 1 + (i % 3) * 4] = 100 + i  # one-pixel objects inside the border
    sizes = object_sizes({"a": specks, "b": large, "c": other}, ["a", "b", "c"])
    assert sizes["typical_diameter"] == pytest.approx(equivalent_diameter(float(np.bincount(other.ravel())[1])))
    assert sizes["median_diameter"] < sizes["typical_diameter"]  # the specks pull the plain median down


def test_nearest_view_keeps_values_and_gaps() -> None:
    """Labels resampled by nearest neighbour: doubled pixels at 2x, every other pixel at 1/2, and a
    2-pixel gap between two objects survives halving wherever it lies."""
    labels = np.arange(48, dtype=np.int32).reshape(1, 6, 8)
    twice = ZoomedView(labels, 2.0, Nearest)
    np.testing.assert_array_equal(twice[..., 0:12, 0:16], labels.repeat(2, axis=1).repeat(2, axis=2))
    half = ZoomedView(labels, 0.5, Nearest)
    np.testing.assert_array_equal(half[..., 0:3, 0:4], labels[:, 1::2, 1::2])
    for start in range(4, 10):
        row = np.ones((1, 1, 20), np.int32)
        row[..., start + 2 :] = 2
        row[..., start : start + 2] = 0
        halved = ZoomedView(row, 0.5, Nearest)[..., 0:1, 0:10].ravel()
        assert 0 in halved and set(halved) == {0, 1, 2}

