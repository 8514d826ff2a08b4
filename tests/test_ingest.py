"""Ingestion: every reader, the split, provenance, and clear errors that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from unetflow.cli import main
from unetflow.config import stage_settings
from unetflow.ingest import ingest_dataset, ingest_slide, make_split, read_dataset
from unetflow.io.errors import InputError
from unetflow.io.sources import natural_sorted
from unetflow.store import open_store, split_names


def dataset_settings(**overrides) -> dict:
    return stage_settings("dataset", json.dumps(overrides))


def two_cells(shape=(40, 48)) -> np.ndarray:
    """Binary label: two squares separated by a one-pixel membrane (ISBI-like 255/0)."""
    label = np.zeros(shape, np.uint8)
    label[5:20, 5:20] = 255
    label[5:20, 21:40] = 255
    return label


def write_pairs(root: Path, n: int = 3) -> None:
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        iio.imwrite(root / "image" / f"{i}.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
        iio.imwrite(root / "label" / f"{i}.png", two_cells())


def assert_nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


def test_pairs_folder_binary_labels_become_instances(tmp_path):
    write_pairs(tmp_path / "src")
    out = ingest_dataset(dataset_settings(format="pairs", path=str(tmp_path / "src"), chunk=64), tmp_path / "data.zarr")
    group = open_store(out, "dataset")
    meta = group.attrs["unetflow"]
    assert meta["names"] == ["0", "1", "2"] and meta["labelled"]
    label = group["labels/0"][:]
    assert label.dtype == np.int32 and label.max() == 2  # two cells split by the membrane
    image = group["images/0"][:]
    assert image.shape == (1, 40, 48) and image.dtype == np.float32
    # pixels as acquired (normalisation belongs to the model), in a store marked as such
    for n in meta["names"]:
        source = iio.imread(tmp_path / "src" / "image" / f"{n}.png")
        np.testing.assert_array_equal(group[f"images/{n}"][0], source.astype(np.float32))
    assert meta["format"] == 2 and "normalization" not in meta
    assert len(meta["provenance"]["sources"]) == 6
    assert all(len(src["sha256"]) == 64 for src in meta["provenance"]["sources"])


def test_tiff_stack_like_isbi(tmp_path):
    images = np.random.default_rng(1).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    labels = np.stack([two_cells((32, 32))] * 4)
    tifffile.imwrite(tmp_path / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "train-labels.tif", labels, photometric="minisblack")
    settings = dataset_settings(
        format="tiff_stack", path=str(tmp_path / "train-volume.tif"), label_path=str(tmp_path / "train-labels.tif"),
        split={"val_indices": [3]}, foreground_value=255,
    )
    group = open_store(ingest_dataset(settings, tmp_path / "d.zarr"))
    assert split_names(group, "val") == ["train-volume_0003"]
    assert len(split_names(group, "train")) == 3
    assert group["labels/train-volume_0001"][:].max() == 2


def test_dsb_folders_merge_masks_into_instances(tmp_path):
    root = tmp_path / "dsb"
    for sample in ("a", "b"):
        (root / sample / "images").mkdir(parents=True)
        (root / sample / "masks").mkdir()
        rgba = np.zeros((30, 30, 4), np.uint8)
        rgba[..., :3] = 100
        rgba[..., 3] = 255
        iio.imwrite(root / sample / "images" / f"{sample}.png", rgba)
        for k in range(3):
            mask = np.zeros((30, 30), np.uint8)
            mask[k * 10 : k * 10 + 8, 2:10] = 255
            iio.imwrite(root / sample / "masks" / f"m{k}.png", mask)
    group = open_store(ingest_dataset(dataset_settings(format="dsb", path=str(root)), tmp_path / "d.zarr"))
    label = group["labels/a"][:]
    assert sorted(np.unique(label)) == [0, 1, 2, 3]
    assert group["images/a"].shape == (1, 30, 30)  # RGBA -> luminance


def test_every_reader_orders_samples_naturally(tmp_path):
    """img2 before img10 in every folder reader, so val_indices mean the same images everywhere."""
    for sample in ("img10", "img2", "img1"):
        (tmp_path / "dsb" / sample / "images").mkdir(parents=True)
        (tmp_path / "dsb" / sample / "masks").mkdir()
        iio.imwrite(tmp_path / "dsb" / sample / "images" / f"{sample}.png", np.zeros((20, 20), np.uint8))
        for k in (10, 2):  # masks in natural order give the instance ids: m2 -> 1, m10 -> 2
            mask = np.zeros((20, 20), np.uint8)
            mask[k : k + 3, 1:4] = 255
            iio.imwrite(tmp_path / "dsb" / sample / "masks" / f"m{k}.png", mask)
        (tmp_path / "pairs" / "image").mkdir(parents=True, exist_ok=True)
        (tmp_path / "pairs" / "label").mkdir(exist_ok=True)
        iio.imwrite(tmp_path / "pairs" / "image" / f"{sample}.png", np.zeros((20, 20), np.uint8))
        iio.imwrite(tmp_path / "pairs" / "label" / f"{sample}.png", two_cells((20, 20)))
    for fmt in ("dsb", "pairs"):
        samples = read_dataset(dataset_settings(format=fmt, path=str(tmp_path / fmt)))
        assert [s.name for s in samples] == ["img1", "img2", "img10"], fmt
    dsb_label = read_dataset(dataset_settings(format="dsb", path=str(tmp_path / "dsb")))[0].label
    assert dsb_label[2, 1] == 1 and dsb_label[10, 1] == 2
    assert natural_sorted(["t0013", "t013", "t12"]) == ["t12", "t0013", "t013"]  # ties by plain text


def test_zarr_source_and_lazy_bigtiff_slide(tmp_path):
    slide = np.random.default_rng(2).random((700, 500), dtype=np.float32)
    tifffile.imwrite(tmp_path / "slide.tif", slide, tile=(256, 256), bigtiff=True)
    out = ingest_slide({"name": "s", "format": "tiff", "path": str(tmp_path / "slide.tif"), "chunk": 256}, 1, "luminance", tmp_path / "s.zarr")
    group = open_store(out, "dataset")
    stored = group["images/s"]
    assert stored.shape == (1, 700, 500) and stored.chunks == (1, 256, 256)
    np.testing.assert_array_equal(stored[0], slide)  # as acquired: predict normalises with the model's recipe
    assert not group.attrs["unetflow"]["labelled"]

    zarr.create_array(str(tmp_path / "img.zarr"), data=(slide[:64, :64] * 255).astype(np.uint8))
    lab = zarr.create_array(str(tmp_path / "lab.zarr"), data=np.pad(two_cells((32, 32)), 16))
    assert lab.shape == (64, 64)
    settings = dataset_settings(format="zarr", path=str(tmp_path / "img.zarr"), label_path=str(tmp_path / "lab.zarr"), split={"val_fraction": 0})
    group = open_store(ingest_dataset(settings, tmp_path / "z.zarr"))
    assert group["labels/img"][:].max() == 2


def test_synthetic_default_and_split_is_seeded():
    names = [f"n{i}" for i in range(10)]
    a = make_split(names, {"val_fraction": 0.3, "seed": 1, "val_indices": None})
    b = make_split(names, {"val_fraction": 0.3, "seed": 1, "val_indices": None})
    c = make_split(names, {"val_fraction": 0.3, "seed": 2, "val_indices": None})
    assert a == b and a != c and len(a["val"]) == 3
    assert sorted(a["train"] + a["val"]) == sorted(names)


def test_cli_writes_synthetic_store(tmp_path):
    out = tmp_path / "data.zarr"
    settings = json.dumps({"synthetic": {"n_images": 3, "size": 96}, "chunk": 64})
    assert main(["ingest", "dataset", str(out), "--settings", settings]) == 0
    group = open_store(out, "dataset")
    assert len(group.attrs["unetflow"]["names"]) == 3
    assert group["labels/synthetic_0000"][:].max() > 3


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing_label", "without label"),
        ("shape", "differs from image shape"),
        ("negative", "negative"),
        ("float", "non-integer"),
        ("corrupt", "cannot be decoded"),
        ("empty", "no files match"),
        ("rgb_refused", "RGB"),
    ],
)
def test_bad_input_is_named_and_leaves_nothing(tmp_path, capsys, breakage, message):
    src = tmp_path / "src"
    write_pairs(src)
    settings = {"format": "pairs", "path": str(src), "image_glob": "image/*", "label_glob": "label/*"}
    if breakage == "missing_label":
        (src / "label" / "2.png").unlink()
    elif breakage == "shape":
        iio.imwrite(src / "label" / "1.png", np.zeros((10, 10), np.uint8))
    elif breakage == "negative":
        (src / "label" / "1.png").unlink()
        tifffile.imwrite(src / "label" / "1.tif", -np.ones((40, 48), np.int16))
    elif breakage == "float":
        (src / "label" / "1.png").unlink()
        tifffile.imwrite(src / "label" / "1.tif", np.full((40, 48), 0.5, np.float32))
    elif breakage == "corrupt":
        data = (src / "image" / "1.png").read_bytes()
        (src / "image" / "1.png").write_bytes(data[: len(data) // 3])
    elif breakage == "empty":
        settings["image_glob"] = "nothing/*"
    elif breakage == "rgb_refused":
        iio.imwrite(src / "image" / "0.png", np.zeros((40, 48, 3), np.uint8))
        settings["rgb_rule"] = "refuse"
    out = tmp_path / "out" / "data.zarr"
    out.parent.mkdir()
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps(settings)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(src) in err and "(expected" in err
    assert_nothing_left(out)


def test_failed_rerun_keeps_previous_store(tmp_path):
    out = tmp_path / "data.zarr"
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps({"synthetic": {"n_images": 2, "size": 64}})]) == 0
    before = open_store(out).attrs["unetflow"]["names"]
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps({"format": "pairs", "path": str(tmp_path / "nope")})]) == 2
    assert open_store(out).attrs["unetflow"]["names"] == before


def test_config_typo_names_the_key(capsys):
    assert main(["ingest", "dataset", "/tmp/never", "--settings", json.dumps({"chunks": 64})]) == 2
    assert "chunks" in capsys.readouterr().err


def test_real_isbi2012_pairs(isbi_dir, tmp_path):
    settings = dataset_settings(
        format="pairs", path=str(isbi_dir), image_glob="image/*.png", label_glob="label/*.png",
        foreground_value=255, labels="binary", split={"val_indices": [25, 26, 27, 28, 29]},
    )
    group = open_store(ingest_dataset(settings, tmp_path / "isbi.zarr"))
    meta = group.attrs["unetflow"]
    assert len(meta["names"]) == 30 and meta["split"]["val"] == ["25", "26", "27", "28", "29"]
    label = group["labels/0"][:]
    assert group["images/0"].shape == (1, 512, 512)
    assert 0.15 < np.mean(label == 0) < 0.3  # ~22 % membrane
    assert label.max() > 100  # hundreds of cells per slice


def test_real_dsb2018(dsb_dir, tmp_path):
    settings = dataset_settings(format="dsb", path=str(dsb_dir), split={"val_fraction": 0.2, "seed": 0})
    group = open_store(ingest_dataset(settings, tmp_path / "dsb.zarr"))
    meta = group.attrs["unetflow"]
    assert len(meta["names"]) == 40 and len(meta["split"]["val"]) == 8
    total = sum(int(group[f"labels/{n}"][:].max()) for n in meta["names"])
    assert total == 2412  # every nucleus mask kept as its own instance


def test_overview_figure_is_written(tmp_path):
    out, png = tmp_path / "data.zarr", tmp_path / "plots" / "dataset.png"
    settings = json.dumps({"synthetic": {"n_images": 3, "size": 64}})
    assert main(["ingest", "dataset", str(out), "--settings", settings, "--preview", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def run_ingest(settings: dict, out: Path, capsys) -> str:
    """Run the CLI expecting a user error; return stderr after checking nothing was left."""
    assert main(["ingest", "dataset", str(out), "--settings", json.dumps(settings)]) == 2
    assert_nothing_left(out)
    return capsys.readouterr().err


def test_stem_collision_is_refused(tmp_path, capsys):
    write_pairs(tmp_path / "src")
    tifffile.imwrite(tmp_path / "src" / "image" / "1.tif", np.zeros((40, 48), np.uint8))
    settings = {"format": "pairs", "path": str(tmp_path / "src"), "image_glob": "image/*", "label_glob": "label/*"}
    err = run_ingest(settings, tmp_path / "d.zarr", capsys)
    assert "same stem" in err and "1.tif" in err


def test_tiff_stack_errors(tmp_path, capsys):
    images = np.zeros((3, 16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "l.tif", np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    settings = {"format": "tiff_stack", "path": str(tmp_path / "v.tif"), "label_path": str(tmp_path / "l.tif")}
    assert "has 2 pages but" in run_ingest(settings, tmp_path / "d.zarr", capsys)
    data = (tmp_path / "v.tif").read_bytes()
    (tmp_path / "v.tif").write_bytes(data[:200])  # truncated
    err = run_ingest(settings, tmp_path / "d.zarr", capsys)
    assert "v.tif" in err and "cannot be decoded" in err


def test_empty_dsb_folder_and_unlabelled_zarr(tmp_path, capsys):
    (tmp_path / "dsb").mkdir()
    assert "contains no sample folders" in run_ingest({"format": "dsb", "path": str(tmp_path / "dsb")}, tmp_path / "d.zarr", capsys)
    (tmp_path / "file.png").write_bytes(b"")
    err = run_ingest({"format": "dsb", "path": str(tmp_path / "file.png")}, tmp_path / "d.zarr", capsys)
    assert "file.png: is a file, not a folder (expected the folder holding the dataset" in err
    zarr.create_array(str(tmp_path / "img.zarr"), data=np.zeros((32, 32), np.uint8))
    err = run_ingest({"format": "zarr", "path": str(tmp_path / "img.zarr")}, tmp_path / "z.zarr", capsys)
    assert "label_path is not set" in err


def test_hold_out_that_the_data_cannot_give_is_an_error():
    with pytest.raises(InputError, match="at least 2 images"):
        make_split(["only"], {"val_fraction": 0.2, "seed": 0, "val_indices": None})
    assert make_split(["only"], {"val_fraction": 0, "seed": 0, "val_indices": None}) == {"train": ["only"], "val": []}


def test_slide_and_dataset_stores_hold_pixels_as_acquired(tmp_path):
    slide = np.random.default_rng(3).random((1, 300, 200), dtype=np.float32) * 4
    zarr.create_array(str(tmp_path / "raw.zarr"), data=slide)
    out = ingest_slide({"name": "s", "format": "zarr", "path": str(tmp_path / "raw.zarr"), "chunk": 128}, 1, "luminance", tmp_path / "s.zarr")
    group = open_store(out, "dataset")
    assert group.attrs["unetflow"]["format"] == 2 and "normalization" not in group.attrs["unetflow"]
    np.testing.assert_array_equal(group["images/s"][:], slide)

