"""The tune stage: a known optimum is found, perfect probabilities give the true objects in every
mode, and tuned.json reaches evaluate and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from test_targets import touching_nuclei
from unetflow import cli
from unetflow.config import stage_settings
from unetflow.instances import InstanceRule
from unetflow.io.errors import InputError
from unetflow.io.ome_zarr import create_prediction, level_path
from unetflow.metrics import evaluate_segmentation
from unetflow.model import UNet, save_checkpoint
from unetflow.postprocess import tuned_objects
from unetflow.inference import argmax_classes
from unetflow.store import write_dataset
from unetflow.targets import TargetSettings, targets
from unetflow.tune import tune
from unetflow.tuned import load_tuned

import zarr


def _disc_pair(shape: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Two discs (radius 12) whose edges touch along a short contact, as (labels, contact mask)."""
    yy, xx = np.indices(shape)
    left = np.hypot(yy - 32, xx - 20) < 12
    right = np.hypot(yy - 32, xx - 44) < 12
    labels = np.where(left, 1, np.where(right, 2, 0)).astype(np.int32)
    bridge = (np.abs(xx - 32) <= 1) & (np.abs(yy - 32) <= 3) & (labels == 0)
    return labels, bridge


def _two_class(p1: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - p1, p1]).astype(np.float32)


def _prediction(path: Path, probabilities: np.ndarray, instances: dict[str, int] | None = None, name: str = "") -> None:
    """A prediction image holding ``probabilities`` (the tuner and evaluate read nothing else of it)."""
    c, h, w = probabilities.shape
    attrs = {"kind": "prediction", "image": name, "instances": {"seeds": "class 1", **(instances or {"grow": 0, "expand": 0})}}
    create_prediction(path, n_classes=c, height=h, width=w, chunk=64, levels=1, dtype="float32", attrs=attrs)
    zarr.open_array(store=str(path), path=level_path("", 0), mode="r+")[:] = probabilities
    objects = InstanceRule(**{k: v for k, v in attrs["instances"].items() if k != "seeds"}).objects(probabilities)
    zarr.open_array(store=str(path), path=level_path("labels/instances", 0), mode="r+")[:] = objects
    zarr.open_array(store=str(path), path=level_path("labels/semantic", 0), mode="r+")[:] = argmax_classes(probabilities)


def _case(tmp_path: Path, probabilities: dict[str, np.ndarray], labels: dict[str, np.ndarray], recipe: dict) -> tuple[Path, Path, Path]:
    """A model dir (only its recipe and class count matter), a store whose images are all val,
    and their predictions."""
    n_classes = next(iter(probabilities.values())).shape[0]
    net = UNet(in_channels=1, n_classes=n_classes, depth=2, base_channels=2)
    (tmp_path / "model").mkdir()
    save_checkpoint(tmp_path / "model" / "best.pt", net, normalization={"method": "none"}, recipe=recipe)
    images = {name: lab[None].astype(np.float32) for name, lab in labels.items()}
    store = write_dataset(tmp_path / "data.zarr", images, labels, split={"train": [], "val": list(labels)}, chunk=64)
    preds = tmp_path / "val"
    preds.mkdir()
    for name, probs in probabilities.items():
        _prediction(preds / f"{name}.ome.zarr", probs, recipe.get("instances"), name)
    return tmp_path / "model", store, preds


def test_tuner_finds_the_one_threshold_that_separates_and_the_min_size_that_drops_debris(tmp_path: Path) -> None:
    """Objects at p = 0.75, the contact between them at 0.65, 2x2 debris specks at 0.75: only
    foreground threshold 0.7 splits the pair (0.8 loses everything), and only a min_size above 4
    pixels and below the discs (~450 px) drops the specks."""
    labels, bridge = _disc_pair()
    p1 = np.where(labels > 0, 0.75, 0.0)
    p1[bridge] = 0.65
    for y, x in [(5, 5), (5, 55), (55, 30)]:
        p1[y : y + 2, x : x + 2] = 0.75
    recipe = {"object_size": {"median_area": 450.0, "median_diameter": 24.0, "n_objects": 2}}
    model, store, preds = _case(tmp_path, {"a": _two_class(p1)}, {"a": labels}, recipe)
    out = tmp_path / "tuned.json"
    settings = stage_settings("tune", json.dumps({"objective": "f1_0.5"}))
    result = tune(model, store, preds, out, settings, plot=tmp_path / "tuning.png")
    assert result["defaults"]["score"] == 0.0  # threshold 0.5: one merged object (plus specks)
    chosen = result["best"]
    assert (chosen["mode"], chosen["seed_threshold"], chosen["foreground_threshold"]) == ("threshold", 0.7, 0.7)
    assert 4 < chosen["min_size"] < 400 and chosen["score"] == 1.0
    assert load_tuned(out)["chunked"] == chosen and (tmp_path / "tuning.png").stat().st_size > 0
    assert len(result["grid"]) == 6 * 5  # thresholds 0.3..0.8 x min_size 0 and four fractions


def test_three_class_tuner_raises_the_seed_threshold_and_grows_back(tmp_path: Path) -> None:
    """3-class: interiors at p1 = 0.8 joined by a neck at p1 = 0.6, a boundary ring of class 2.
    Seeds > 0.5 merge the pair; seeds > 0.7 split it, and the recipe's growth through the
    foreground gives the whole objects back."""
    labels, _ = _disc_pair()
    yy, xx = np.indices(labels.shape)
    neck = (np.abs(xx - 32) <= 3) & (np.abs(yy - 32) <= 2)  # joins the eroded interiors
    interior = ndimage.binary_erosion(labels > 0, iterations=2) | neck
    p1 = np.where(interior, 0.8, 0.0)
    p1[neck] = 0.6
    p2 = np.where((labels > 0) & ~interior, 0.9, np.where(neck, 0.35, 0.0))
    probs = np.stack([1.0 - p1 - p2, p1, p2]).astype(np.float32)
    recipe = {"instances": {"grow": 4, "expand": 0}}
    model, store, preds = _case(tmp_path, {"a": probs}, {"a": labels}, recipe)
    result = tune(model, store, preds, tmp_path / "tuned.json", stage_settings("tune", json.dumps({})))
    chosen = result["best"]
    assert result["defaults"]["score"] < 0.5 < chosen["score"]
    assert chosen["seed_threshold"] in (0.6, 0.7) and chosen["min_size"] == 0  # no object size: no filter
    objects = tuned_objects(probs, InstanceRule(grow=4), chosen)
    assert evaluate_segmentation(labels, objects, [0.9])["f1@0.9"] == 1.0


def test_rand_objective_searches_the_foreground_threshold_only(tmp_path: Path) -> None:
    """ISBI protocol: membranes (background) faint where two cells meet; the Rand error is
    minimised by the threshold that keeps the membrane, with no size filter."""
    labels, bridge = _disc_pair()
    p1 = np.where(labels > 0, 0.9, 0.05)
    p1[bridge] = 0.55
    recipe = {"object_size": {"median_area": 450.0, "median_diameter": 24.0, "n_objects": 2}}
    model, store, preds = _case(tmp_path, {"a": _two_class(p1)}, {"a": labels}, recipe)
    settings = stage_settings("tune", json.dumps({"objective": "rand", "thresholds": [0.3, 0.5, 0.6, 0.7]}))
    result = tune(model, store, preds, tmp_path / "tuned.json", settings)
    assert {row["min_size"] for row in result["grid"]} == {0} and len(result["grid"]) == 4
    assert result["best"]["foreground_threshold"] == 0.6 and result["best"]["score"] == 0.0
    assert result["defaults"]["score"] > 0.3  # merged at 0.5


def test_pixel_metrics_get_the_threshold_with_the_lowest_val_pixel_error(tmp_path: Path) -> None:
    """Object rims predicted at 0.42: every pixel is right only below 0.42, whatever the objects need."""
    labels, _ = _disc_pair()
    rim = (labels > 0) & ~ndimage.binary_erosion(labels > 0, iterations=2)
    p1 = np.where(labels > 0, 0.9, 0.05)
    p1[rim] = 0.42
    model, store, preds = _case(tmp_path, {"a": _two_class(p1)}, {"a": labels}, {})
    settings = stage_settings("tune", json.dumps({"thresholds": [0.3, 0.4, 0.6]}))
    pixel = tune(model, store, preds, tmp_path / "tuned.json", settings)["pixel"]
    errors = {row["foreground_threshold"]: row["pixel_error"] for row in pixel["grid"]}
    assert errors[0.5] == pytest.approx(rim.mean()) and errors[0.4] == errors[0.3] == 0.0
    assert pixel["foreground_threshold"] == 0.3 and pixel["pixel_error"] == 0.0  # the first of equals
    assert json.loads((tmp_path / "tuned.json").read_text())["pixel"] == pixel
    # evaluate scores the pixels at that threshold (the objects keep theirs); without tuned.json, the objects' union
    summaries = {}
    for how, extra in (("tuned", ["--tuned", str(tmp_path / "tuned.json")]), ("defaults", [])):
        args = ["evaluate", str(store), str(preds), str(tmp_path / how), "--split", "val", "--settings", '{"overlays": 0}']
        assert cli.main(args + extra) == 0
        summaries[how] = json.loads((tmp_path / how / "summary.json").read_text())
    assert summaries["tuned"]["pixel_error"] == 0.0 and summaries["tuned"]["fg_iou"] == 1.0
    assert summaries["tuned"]["postprocess"]["pixel_metrics"] == {"foreground_threshold": 0.3}
    assert summaries["defaults"]["pixel_error"] == pytest.approx(rim.mean())


def test_a_flat_objective_keeps_the_defaults(tmp_path: Path) -> None:
    """A model that finds nothing scores 0 everywhere: the defaults stay, not the grid's first row."""
    labels, _ = _disc_pair()
    model, store, preds = _case(tmp_path, {"a": _two_class(np.zeros(labels.shape))}, {"a": labels}, {})
    result = tune(model, store, preds, tmp_path / "tuned.json", stage_settings("tune", "{}"))
    assert result["best"] == result["chunked"] == result["defaults"]


@pytest.mark.parametrize("mode", ["boundary-3class", "binary-threshold", "binary-watershed"])
def test_perfect_probabilities_give_the_true_objects_in_every_mode(mode: str) -> None:
    """Targets fed back as one-hot probabilities: every post-processing mode recovers touching
    DSB-like nuclei (made separable by the gap rule) with F1 >= 0.99 at IoU 0.5. The gaps
    already separate them, so the watershed must split nothing: its depth h is the largest
    radius (12 px; a shallower h over-splits the overlapping, non-convex nuclei)."""
    labels = touching_nuclei(2)
    settings = TargetSettings(mode="boundary" if mode.startswith("boundary") else "binary")
    _, classes = targets(labels, settings)
    probs = np.stack([(classes == k) for k in range(settings.n_classes)]).astype(np.float32)
    recipe = InstanceRule(**settings.instance_rule(gaps_drawn=True))
    entry = {"mode": "watershed" if mode.endswith("watershed") else "threshold", "seed_threshold": 0.5,
             "foreground_threshold": 0.5, "h_distance": 12.0, "min_size": 0}
    objects = tuned_objects(probs, recipe, entry)
    assert ndimage.label(labels > 0)[1] < labels.max() - 10  # plain components of the truth would merge many
    assert evaluate_segmentation(labels, objects, [0.5])["f1@0.5"] >= 0.99


def test_evaluate_applies_the_tuned_choice_and_refuses_a_bad_tuned_file(tmp_path: Path) -> None:
    labels, bridge = _disc_pair()
    p1 = np.where(labels > 0, 0.75, 0.0)
    p1[bridge] = 0.65
    model, store, preds = _case(tmp_path, {"a": _two_class(p1)}, {"a": labels}, {})
    tuned = tmp_path / "tuned.json"
    assert cli.main(["tune", str(model), str(store), str(preds), str(tuned), "--settings", "{}"]) == 0
    scores = {}
    for how, extra in (("tuned", ["--tuned", str(tuned)]), ("defaults", [])):
        out = tmp_path / how
        args = ["evaluate", str(store), str(preds), str(out), "--split", "val", "--settings", json.dumps({"overlays": 0})]
        assert cli.main(args + extra + ["--plot", str(tmp_path / f"{how}.png")]) == 0
        scores[how] = json.loads((out / "summary.json").read_text())
    assert scores["tuned"]["postprocess"]["tuned"]["foreground_threshold"] == 0.7
    assert scores["tuned"]["n_pred"] == 2 and scores["defaults"]["n_pred"] == 1
    assert scores["defaults"]["postprocess"]["tuned"] is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"best": {"mode": "threshold"}}))
    with pytest.raises(InputError, match="lacks"):
        load_tuned(bad)
    assert cli.main(["evaluate", str(store), str(preds), str(tmp_path / "x"), "--split", "val", "--tuned", str(bad)]) == 2
    assert not (tmp_path / "x").exists()


def test_empty_val_split_is_a_clear_error(tmp_path: Path) -> None:
    labels, _ = _disc_pair()
    model, store, preds = _case(tmp_path, {"a": _two_class((labels > 0) * 0.9)}, {"a": labels}, {})
    store = write_dataset(tmp_path / "d2.zarr", {"a": labels[None].astype(np.float32)}, {"a": labels}, split={"train": ["a"], "val": []}, chunk=64)
    assert cli.main(["tune", str(model), str(store), str(preds), str(tmp_path / "t.json")]) == 2
    assert not (tmp_path / "t.json").exists()
