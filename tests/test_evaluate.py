"""Tests of the evaluate stage end to end through the CLI: a tiny labelled store and hand-written
prediction folders (perfect, split, merged), the outputs, watershed post-processing, and clear
errors that leave nothing behind."""

from __future__ import annotations

import json

import shutil

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from unetflow import cli
from unetflow.io.ome_zarr import INSTANCES, PROBABILITIES, SEMANTIC, create_prediction, level_path
from unetflow.metrics import UndefinedMetricWarning
from unetflow.plots.evaluation import overlay_rgb
from unetflow.store import write_dataset

SHAPE = (40, 60)


def discs(*centres, radius=9):
    """Label image of discs, object k at centres[k-1]; later discs cut earlier ones."""
    yy, xx = np.indices(SHAPE)
    labels = np.zeros(SHAPE, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


GT = {
    "a": discs((10, 10), (28, 45)),
    "b": discs((12, 12), (12, 35), (30, 20)),
    "c": discs((20, 20), (20, 36)),  # two discs touching along a 14-px neck
}


def write_prediction(path, name, instances, probability):
    """A prediction as `unetflow predict` writes it: level 0 only, probabilities for 2 classes."""
    root = create_prediction(
        path, n_classes=2, height=SHAPE[0], width=SHAPE[1], chunk=64, levels=1, dtype="float32",
        attrs={"kind": "prediction", "image": name, "complete": True},
    )
    root[level_path(PROBABILITIES, 0)][...] = np.stack([1 - probability, probability]).astype(np.float32)
    root[level_path(SEMANTIC, 0)][...] = (probability > 0.5).astype(np.uint8)
    root[level_path(INSTANCES, 0)][...] = instances.astype(np.int32)


@pytest.fixture
def tiny(tmp_path):
    """Store with train = [a], val = [b, c]; predictions: b perfect, c merged into one object
    (the instances of connected components), its probability dipping on the true boundary."""
    rng = np.random.default_rng(0)
    images = {n: (labels > 0)[None].astype(np.float32) + 0.1 * rng.standard_normal((1, *SHAPE)) for n, labels in GT.items()}
    store = write_dataset(tmp_path / "data.zarr", images, GT, split={"train": ["a"], "val": ["b", "c"]}, chunk=64)
    preds = tmp_path / "predictions"
    preds.mkdir()
    write_prediction(preds / "b.ome.zarr", "b", GT["b"], np.where(GT["b"] > 0, 0.95, 0.05))
    gt = GT["c"]
    probability = np.where(gt > 0, 0.95, 0.05)
    probability[(gt == 1) & ndimage.binary_dilation(gt == 2, np.ones((3, 3)))] = 0.6
    write_prediction(preds / "c.ome.zarr", "c", (gt > 0).astype(np.int32), probability)
    return store, preds, tmp_path


def run_cli(store, preds, out, settings=None, *extra):
    argv = ["evaluate", str(store), str(preds), str(out), *extra]
    if settings is not None:
        argv += ["--settings", json.dumps(settings)]
    return cli.main(argv)


def test_cli_writes_table_summary_overlays_and_figures(tiny):
    store, preds, tmp = tiny
    out, metrics_png, overlay_png = tmp / "evaluation", tmp / "plots" / "metrics.png", tmp / "plots" / "overlays.png"
    code = run_cli(store, preds, out, {"overlays": 1}, "--plot", str(metrics_png), "--overlay-plot", str(overlay_png))
    assert code == 0
    table = pd.read_csv(out / "per_image.csv")
    assert table["image"].tolist() == ["b", "c"]
    b, c = table.iloc[0], table.iloc[1]
    assert b["pixel_error"] == 0 and b["mean_ap"] == 1 and b["rand_error"] == 0 and b["seg"] == 1
    # c: the two true objects (the first cut by the second) merged into one prediction
    n1, n2 = np.count_nonzero(GT["c"] == 1), np.count_nonzero(GT["c"] == 2)
    n, p1 = n1 + n2, n1 / (n1 + n2)
    assert c["n_gt"] == 2 and c["n_pred"] == 1 and c["pixel_error"] == 0
    assert c["rand_recall"] == pytest.approx(1)
    assert c["rand_precision"] == pytest.approx((n1 * (n1 - 1) + n2 * (n2 - 1)) / (n * (n - 1)))
    assert c["vi_merge"] == pytest.approx(-p1 * np.log2(p1) - (1 - p1) * np.log2(1 - p1))
    assert c["seg"] == pytest.approx((n1 / n + n2 / n) / 2)
    assert (c["tp@0.5"], c["fp@0.5"], c["fn@0.5"]) == (1, 0, 1)  # the whole second disc has IoU n2/n > 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["postprocess"] == {"method": "connected_components", "min_size": 0}
    assert summary["split"] == "val" and summary["images"] == ["b", "c"] and summary["n_gt"] == 5
    assert summary["mean_ap"] == pytest.approx(table["mean_ap"].mean())
    assert summary["pixel_error"] == 0 and summary["std"]["seg"] == pytest.approx(table["seg"].std(ddof=0))
    assert summary["curves"]["f1"][0] == pytest.approx(table["f1@0.5"].mean())
    assert summary["pooled"]["tp"][0] == 4 and summary["pooled"]["f1"][0] == pytest.approx(8 / (8 + 0 + 1))
    assert len(summary["curves"]["ap"]) == len(summary["iou_thresholds"]) == 10
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["b.png"]
    assert plt.imread(out / "overlays" / "b.png").shape[:2] == SHAPE
    for png in (metrics_png, overlay_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp.rglob(".*tmp-*")]


def test_all_background_ground_truth_is_undefined_not_perfect(tmp_path):
    empty = np.zeros(SHAPE, np.int32)
    images = {n: np.zeros((1, *SHAPE), np.float32) for n in ("a", "z")}
    store = write_dataset(tmp_path / "data.zarr", images, {"a": GT["a"], "z": empty}, split={"train": ["a"], "val": ["z"]})
    preds = tmp_path / "predictions"
    preds.mkdir()
    write_prediction(preds / "z.ome.zarr", "z", empty, np.zeros(SHAPE))
    with pytest.warns(UndefinedMetricWarning):
        assert run_cli(store, preds, tmp_path / "evaluation") == 0
    table = pd.read_csv(tmp_path / "evaluation" / "per_image.csv")
    assert table[["rand_error", "seg", "vi_split"]].isna().all(axis=None)
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    assert summary["rand_error"] is None and summary["seg"] is None and summary["std"]["seg"] is None
    assert summary["pixel_error"] == 0


def test_watershed_is_used_and_recorded(tiny):
    store, preds, tmp = tiny
    settings = {"postprocess": "watershed", "watershed": {"source": "probability"}, "overlays": 0}
    assert run_cli(store, preds, tmp / "ws", settings) == 0
    table = pd.read_csv(tmp / "ws" / "per_image.csv")
    c = table.set_index("image").loc["c"]
    assert c["n_pred"] == 2 and c["tp@0.9"] == 2  # the merge is undone at the probability dip
    summary = json.loads((tmp / "ws" / "summary.json").read_text())
    assert summary["postprocess"]["method"] == "watershed"
    assert summary["postprocess"]["watershed"]["source"] == "probability"
    assert list((tmp / "ws" / "overlays").iterdir()) == []


def test_min_size_removes_small_predicted_objects(tiny):
    store, preds, tmp = tiny
    assert run_cli(store, preds, tmp / "big", {"min_size": 300, "overlays": 0}) == 0
    table = pd.read_csv(tmp / "big" / "per_image.csv").set_index("image")
    # discs have 253 px (b's all removed), the merged pair in c is larger and stays
    assert table.loc["b", "n_pred"] == 0 and table.loc["c", "n_pred"] == 1


def test_missing_prediction_fails_cleanly(tiny, capsys):
    store, preds, tmp = tiny
    shutil.rmtree(preds / "c.ome.zarr")
    out, plot = tmp / "evaluation", tmp / "plots" / "metrics.png"
    assert run_cli(store, preds, out, None, "--plot", str(plot)) == 2
    err = capsys.readouterr().err
    assert "c.ome.zarr" in err and "missing prediction" in err
    assert not out.exists() and not plot.exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["data.zarr", "predictions"]


def test_wrong_size_prediction_is_refused(tiny, capsys):
    store, preds, tmp = tiny
    root = zarr.open_group(str(preds / "b.ome.zarr"), mode="r+")
    del root[level_path(INSTANCES, 0)]
    root.create_array(level_path(INSTANCES, 0), shape=(20, 60), dtype="int32", fill_value=0)
    assert run_cli(store, preds, tmp / "evaluation") == 2
    err = capsys.readouterr().err
    assert "b.ome.zarr" in err and "(20, 60)" in err and not (tmp / "evaluation").exists()


def test_unlabelled_store_and_empty_split_are_refused(tmp_path, capsys):
    image = {"x": np.zeros((1, 16, 16), np.float32)}
    write_dataset(tmp_path / "slide.zarr", image, None, split={"train": [], "val": ["x"]})
    write_dataset(tmp_path / "noval.zarr", image, {"x": np.zeros((16, 16), np.int32)}, split={"train": ["x"], "val": []})
    (tmp_path / "preds").mkdir()
    assert run_cli(tmp_path / "slide.zarr", tmp_path / "preds", tmp_path / "o1") == 2
    assert "no labels" in capsys.readouterr().err
    assert run_cli(tmp_path / "noval.zarr", tmp_path / "preds", tmp_path / "o2") == 2
    assert "split is empty" in capsys.readouterr().err


def test_overlay_colours_mark_each_contour():
    image = np.zeros((1, 12, 12), np.float32)
    gt = np.zeros((12, 12), np.int32)
    gt[2:8, 2:8] = 1
    pred = np.zeros_like(gt)
    pred[2:8, 2:10] = 1  # shares the top-left corner edges, extends right
    rgb = overlay_rgb(image, gt, pred)
    assert rgb[2, 4].tolist() == [255, 255, 0]  # both top edges
    assert rgb[4, 7].tolist() == [0, 255, 0]  # true right edge inside the prediction
    assert rgb[4, 9].tolist() == [255, 0, 255]  # predicted right edge
    assert rgb[4, 4].tolist() == [0, 0, 0]
