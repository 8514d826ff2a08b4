"""Regression tests of issue 12: input and stores that once gave silent garbage or a run that
looked finished (stray label values, leftovers of killed runs, non-finite pixels, damaged
chunks). The workflow-level probes (odd results paths, an unactivated venv) are in
test_workflow.py, undefined metrics in test_metrics.py and test_evaluate.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from unetflow.cli import main
from unetflow.ingest import ingest_slide
from unetflow.io.errors import InputError
from unetflow.io.images import read_file
from unetflow.io.labels import to_instances
from unetflow.predict import PredictOptions, predict_store
from unetflow.store import StoreError, open_store, write_dataset


def five_cells() -> np.ndarray:
    """A 0/255 mask of five separate square cells."""
    mask = np.zeros((40, 60), np.uint8)
    for x in (2, 14, 26, 38, 50):
        mask[5:15, x : x + 8] = 255
    return mask


def test_auto_labels_refuse_a_binary_mask_with_stray_values(tmp_path):
    mask = five_cells()
    mask[30:33, :] = 128  # a stray band
    mask[38, 58] = 1  # and one stray pixel
    with pytest.raises(InputError, match=r"labels: auto cannot tell.*255 in 5 regions") as caught:
        to_instances(mask, "auto", None, tmp_path / "mask.png")
    assert str(tmp_path / "mask.png") in str(caught.value) and "128: 180 px" in str(caught.value)
    assert to_instances(mask, "binary", 255, "mask.png").max() == 5  # the explicit choice works


def test_auto_labels_rule():
    assert to_instances(five_cells(), "auto", None, "m").max() == 5  # two values: binary
    instances = np.zeros((20, 20), np.int32)
    instances[2:6, 2:6], instances[8:12, 2:6], instances[2:6, 10:19] = 3, 7, 9
    instances[5, 6] = 3  # corner-touching pixels still belong to one object
    instances[6, 7] = 3
    assert np.array_equal(to_instances(instances, "auto", None, "m"), instances)
    split = instances.copy()
    split[15:18, 15:18] = 7  # id 7 now names two separate regions
    with pytest.raises(InputError, match="7 in 2 regions"):
        to_instances(split, "auto", None, "m")
    assert np.array_equal(to_instances(split, "instance", None, "m"), split)


def test_temporaries_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "slide.zarr"
    stale = [tmp_path / "..slide.zarr.raw.zarr.tmp-0badf00d", tmp_path / ".slide.zarr.tmp-12345678"]
    for path in stale:
        (path / "c").mkdir(parents=True)
        (path / "c" / "0").write_bytes(b"\0" * 4096)
    unrelated = tmp_path / ".other.zarr.tmp-12345678"
    unrelated.mkdir()
    ingest_slide({"name": "slide", "format": "synthetic", "size": 128, "chunk": 64, "seed": 0}, 1, "luminance", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name, out.name]


def nan_pairs(root: Path, bad: float) -> None:
    """A `pairs` folder of two float TIFF images, the second with four ``bad`` pixels."""
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = rng.random((40, 60), dtype=np.float32)
        if i == 1:
            image[7, 9:13] = bad
        tifffile.imwrite(root / "image" / f"{i}.tif", image)
        iio.imwrite(root / "label" / f"{i}.png", five_cells())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_refused_naming_file_count_and_position(tmp_path, capsys, bad):
    nan_pairs(tmp_path / "src", bad)
    settings = {"format": "pairs", "path": str(tmp_path / "src"), "image_glob": "image/*", "label_glob": "label/*"}
    out = tmp_path / "data.zarr"
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps(settings)]) == 2
    err = capsys.readouterr().err
    counts = "4 NaN and 0 infinite" if np.isnan(bad) else "0 NaN and 4 infinite"
    assert f"{tmp_path / 'src' / 'image' / '1.tif'}: {counts} pixel(s) (first at (channel, y, x) = (0, 7, 9))" in err
    assert not out.exists() and not list(tmp_path.glob(".data.zarr*"))


def test_non_finite_pixels_can_be_replaced_with_a_warning(tmp_path, caplog):
    nan_pairs(tmp_path / "src", np.nan)
    settings = {
        "format": "pairs", "path": str(tmp_path / "src"), "image_glob": "image/*", "label_glob": "label/*",
        "non_finite": {"action": "replace", "value": 0.5},
    }
    assert main(["ingest", "dataset", str(tmp_path / "data.zarr"), "--settings", json.dumps(settings)]) == 0
    assert "1.tif: 4 NaN and 0 infinite pixel(s)" in caplog.text and "replaced by 0.5" in caplog.text
    group = open_store(tmp_path / "data.zarr", "dataset")
    assert all(np.isfinite(group[f"images/{n}"][:]).all() for n in ("0", "1"))


def test_non_finite_slide_pixels_are_found_chunk_by_chunk(tmp_path):
    slide = np.random.default_rng(1).random((300, 200), dtype=np.float32)
    slide[290, 150] = np.nan  # in the last chunk row, far from the first chunk
    tifffile.imwrite(tmp_path / "slide.tif", slide, tile=(64, 64))
    entry = {"name": "s", "format": "tiff", "path": str(tmp_path / "slide.tif"), "chunk": 128}
    with pytest.raises(InputError, match=r"1 NaN and 0 infinite pixel\(s\) \(first at \(channel, y, x\) = \(0, 290, 150\)\)"):
        ingest_slide(entry, 1, "luminance", tmp_path / "s.zarr")
    assert not list(tmp_path.glob("*s.zarr*"))
    out = ingest_slide(entry, 1, "luminance", tmp_path / "s.zarr", non_finite={"action": "replace", "value": 0.0})
    assert np.isfinite(open_store(out, "dataset")["images/s"][:]).all()


@pytest.fixture
def small_store(tmp_path):
    """A dataset store of two 96 x 64 images in 32 px chunks, one image all zeros (its chunks
    hold only the fill value and are stored all the same)."""
    images = {"a": np.ones((1, 96, 64), np.float32), "z": np.zeros((1, 96, 64), np.float32)}
    labels = {"a": np.ones((96, 64), np.int32), "z": np.zeros((96, 64), np.int32)}
    normalization = {"method": "zscore", "mean": [0.0], "std": [1.0]}
    return write_dataset(tmp_path / "data.zarr", images, labels, normalization=normalization, chunk=32)


def test_every_chunk_is_stored_with_a_checksum(small_store):
    group = open_store(small_store, "dataset")
    for name in ("images/z", "labels/z"):
        assert sum(p.is_file() for p in (small_store / name / "c").rglob("*")) == 3 * 2  # the whole grid
        assert any(codec.to_dict()["name"] == "crc32c" for codec in group[name].compressors)


@pytest.mark.parametrize("damage, problem", [("delete", "is missing"), ("truncate", "is damaged"), ("flip", "is damaged")])
def test_a_damaged_chunk_stops_the_next_stage_naming_store_array_and_chunk(small_store, tmp_path, capsys, damage, problem):
    chunk = small_store / "images" / "a" / "c" / "0" / "2" / "1"
    if damage == "delete":
        chunk.unlink()
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:5])
    else:  # one flipped bit: zstd may still decode it, the checksum does not match
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError) as caught:
        open_store(small_store, "dataset")
    assert str(caught.value).startswith(f"{small_store}: array 'images/a', chunk (0, 2, 1) ({chunk}) {problem}")
    assert main(["weights", str(small_store), str(tmp_path / "weights.zarr")]) == 2
    assert f"array 'images/a', chunk (0, 2, 1) ({chunk}) {problem}" in capsys.readouterr().err
    assert not (tmp_path / "weights.zarr").exists()


@pytest.mark.parametrize("content, problem", [(b"", "file is empty (0 bytes)"), (b"not an image\n", "cannot be decoded")])
def test_empty_or_text_png_is_named_without_install_advice(tmp_path, content, problem):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(InputError, match=re.escape(problem)) as caught:
        read_file(tmp_path / "x.png")
    assert str(tmp_path / "x.png") in str(caught.value) and "pip install" not in str(caught.value)


def test_predict_with_a_missing_model_leaves_no_partial_folder(small_store, tmp_path):
    out = tmp_path / "predictions" / "val"
    with pytest.raises(InputError, match="no model checkpoint"):
        predict_store(tmp_path / "no-model", small_store, out, "train", PredictOptions.from_settings({}))
    assert not (tmp_path / "predictions").exists() or not list((tmp_path / "predictions").iterdir())
