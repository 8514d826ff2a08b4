"""The normalisation recipe: statistics in memory and streamed, apply, round trips, old stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import unetflow.normalize as normalize_module
from unetflow.cli import main
from unetflow.config import ConfigError, stage_settings
from unetflow.model import UNet, load_checkpoint, save_checkpoint
from unetflow.normalize import (
    HISTOGRAM_BINS,
    Normalization,
    NormalizedArray,
    Stats,
    apply,
    image_percentiles,
    streamed_percentiles,
)
from unetflow.store import ATTRS_KEY, StoreError, open_store, write_dataset

Q = (0.0, 1.0, 37.5, 50.0, 99.8, 100.0)


def _slide(tmp_path: Path, data: np.ndarray, chunk: int = 100) -> zarr.Array:
    """A zarr slide stored in chunks that do not divide its size."""
    arr = zarr.create_array(str(tmp_path / "slide.zarr"), shape=data.shape, chunks=(data.shape[0], chunk, chunk),
                            dtype=data.dtype)
    arr[...] = data
    return arr


def test_streamed_percentiles_of_integer_pixels_equal_numpy_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = np.stack([rng.integers(0, 4096, (333, 271)), rng.poisson(3.0, (333, 271)) * 7 + 100]).astype(np.float32)
    slide = _slide(tmp_path, data)
    in_memory = np.stack([np.percentile(data[c].astype(np.float64), Q) for c in range(2)], axis=1)
    np.testing.assert_array_equal(streamed_percentiles(slide, Q, chunk=64), in_memory)
    np.testing.assert_array_equal(image_percentiles(slide, Q), in_memory)


def test_exact_percentiles_equal_numpy_and_leave_the_image_as_it_was() -> None:
    """The exact path gives numpy's values and leaves the caller's pixels untouched."""
    image = np.random.default_rng(3).normal(size=(2, 97, 83))  # float64: a copy must still be made
    before = image.copy()
    expected = np.stack([np.percentile(image[c], Q) for c in range(2)], axis=1)
    np.testing.assert_array_equal(image_percentiles(image, Q), expected)
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize(
    "kind",
    ["normal float32", "skewed float32", "narrow float32", "float64", "uint8", "uint16", "int16 wide", "int32 wide",
     "two values", "extreme float32"],
)
def test_percentiles_by_radix_select_equal_numpy_bit_for_bit(kind: str) -> None:
    """Images past ``SORTED_DIRECTLY`` values are not sorted but counted by key bits
    (``order_statistics``); every pixel type must still give numpy.percentile's exact values."""
    rng = np.random.default_rng(7)
    shape = (310, 290)
    pixels = {
        "normal float32": lambda: rng.normal(size=shape).astype(np.float32),
        "skewed float32": lambda: (rng.exponential(1.0, shape) ** 4).astype(np.float32),  # most values in one bin
        "narrow float32": lambda: (1000 + rng.random(shape)).astype(np.float32),
        "float64": lambda: rng.normal(size=shape) * 1e5,
        "uint8": lambda: rng.integers(0, 256, shape).astype(np.uint8),
        "uint16": lambda: rng.integers(100, 60000, shape).astype(np.uint16),
        "int16 wide": lambda: rng.integers(-30000, 30000, shape).astype(np.int16),  # high - low overflows int16
        "int32 wide": lambda: rng.integers(-2**30, 2**30, shape).astype(np.int32),
        "two values": lambda: (rng.random(shape) > 0.995).astype(np.float32),
        "extreme float32": lambda: np.where(rng.random(shape) > 0.999, np.float32(3e38), np.float32(-3e38) * rng.random(shape)).astype(np.float32),
    }[kind]()
    assert pixels.size > normalize_module.SORTED_DIRECTLY
    q = (0.0, 0.1, 1.0, 50.0, 99.8, 99.99, 100.0)
    np.testing.assert_array_equal(
        normalize_module.channel_percentiles(pixels, q), np.percentile(pixels.astype(np.float64), q)
    )


def test_percentiles_of_an_image_with_nan_are_nan_as_numpy_says() -> None:
    pixels = np.random.default_rng(8).normal(size=(300, 300)).astype(np.float32)
    pixels[5, 7] = np.nan
    assert np.isnan(normalize_module.channel_percentiles(pixels, (1.0, 99.8))).all()


def test_streamed_percentiles_of_float_pixels_stay_within_one_bin(tmp_path: Path) -> None:
    data = (np.random.default_rng(1).gamma(2.0, 3.0, (1, 301, 257)) * 1.37).astype(np.float32)
    streamed = streamed_percentiles(_slide(tmp_path, data), Q, chunk=64)
    exact = np.percentile(data[0].astype(np.float64), Q)[:, None]
    bound = (data.max() - data.min()) / HISTOGRAM_BINS
    assert np.abs(streamed - exact).max() <= bound
    assert np.abs(streamed - exact).max() > 0  # really the histogram path, not numpy's


def test_large_images_are_streamed_and_statistics_do_not_depend_on_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(2).integers(0, 255, (1, 150, 170)).astype(np.float32)
    exact = image_percentiles(data, (1.0, 99.8))
    monkeypatch.setattr(normalize_module, "EXACT_BYTES", 1024)  # every image counts as a slide now
    calls = []
    monkeypatch.setattr(normalize_module, "streamed_percentiles", lambda *a: calls.append(a) or exact)
    Normalization().statistics(_slide(tmp_path, data))
    Normalization().statistics(data)
    assert len(calls) == 2  # both the zarr slide and the numpy copy took the streamed path


def test_percentile_statistics_and_apply() -> None:
    data = np.random.default_rng(3).normal(5.0, 2.0, (2, 40, 30)).astype(np.float32)
    data[1] = 7.0  # a flat channel is shifted to 0, not divided by zero
    stats = Normalization(low=2.0, high=98.0).statistics(data)
    p2, p98 = np.percentile(data[0].astype(np.float64), [2.0, 98.0])
    assert stats.offset == pytest.approx((p2, 7.0)) and stats.scale == pytest.approx((p98 - p2, 1.0))
    out = apply(data, stats)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], (data[0] - p2) / (p98 - p2), rtol=1e-5, atol=1e-6)
    assert np.all(out[1] == 0)
    view = NormalizedArray(data, stats)
    np.testing.assert_array_equal(view[..., 5:17, 3:29], out[..., 5:17, 3:29])
    assert view.shape == data.shape and view.nbytes == data.size * 4


def test_recipe_round_trips_through_json_and_checkpoints(tmp_path: Path) -> None:
    defaults = Normalization.from_settings(stage_settings("model", "{}")["normalization"])
    assert defaults == Normalization("percentile", 1.0, 99.8)
    zscore = Normalization("zscore").fit({"a": np.full((2, 4, 4), 3.0), "b": np.full((2, 4, 4), 5.0)})
    assert zscore.mean == (4.0, 4.0) and zscore.std == (1.0, 1.0)
    for recipe in (defaults, zscore):
        assert Normalization.from_settings(json.loads(json.dumps(recipe.to_json()))) == recipe
        save_checkpoint(tmp_path / "m.pt", UNet(in_channels=2, depth=1, base_channels=1),
                        normalization=recipe.to_json())
        assert Normalization.from_settings(load_checkpoint(tmp_path / "m.pt")["normalization"]) == recipe
    with pytest.raises(ConfigError, match=r"model.normalization: low 50 and high 10"):
        Normalization.from_settings({"method": "percentile", "low": 50, "high": 10})
    with pytest.raises(ValueError, match="fitted"):
        Normalization("zscore").statistics(np.zeros((1, 4, 4)))


def test_zscore_statistics_are_the_given_images_only() -> None:
    train = {"a": np.random.default_rng(4).normal(2.0, 3.0, (1, 50, 50))}
    recipe = Normalization("zscore").fit(train)
    assert recipe.mean == pytest.approx((train["a"].mean(),)) and recipe.std == pytest.approx((train["a"].std(),))
    stats = recipe.statistics(np.full((1, 8, 8), 1e9))  # any image is scaled with the training numbers
    assert stats == Stats(recipe.mean, recipe.std)


def test_store_of_normalised_pixels_is_refused_with_a_clear_error(tmp_path: Path, capsys) -> None:
    data = write_dataset(tmp_path / "data.zarr", {"a": np.zeros((1, 16, 16), np.float32)},
                         {"a": np.zeros((16, 16), np.int32)})
    assert open_store(data, "dataset")
    group = zarr.open_group(str(data), mode="r+")
    old = {k: v for k, v in group.attrs[ATTRS_KEY].items() if k != "format"}
    group.attrs[ATTRS_KEY] = {**old, "normalization": {"method": "zscore", "mean": [0.0], "std": [1.0]}}
    with pytest.raises(StoreError, match="store format 1, expected 2.*re-run ingest"):
        open_store(data, "dataset")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", UNet(in_channels=1, depth=1, base_channels=1),
                    normalization=Normalization().to_json())
    assert main(["predict", str(tmp_path / "m.pt"), str(data), str(tmp_path / "out")]) == 2
    assert "re-run ingest" in capsys.readouterr().err and not (tmp_path / "out").exists()
