"""Score the predictions of a labelled split against its ground truth.

For every image of the split (``test`` by default) the prediction ``<pred_dir>/<name>.ome.zarr``
is turned into objects (``evaluate.postprocess``) -- those the tune stage's choice on the val
split gives (``tuned``: tuned.json, see ``unetflow.tune``), the predictor's own at the default
thresholds, or a watershed of its foreground probability -- and every metric of
:mod:`unetflow.metrics` is computed against ``labels/<name>`` of the data store.

With ``tuned`` and a tuned.json that chose a pixel threshold (``pixel``), the pixel metrics (pixel
error, foreground IoU and Dice) score the foreground probability at that threshold rather than the
objects' union -- the ISBI 2012 protocol, which scored each metric at its own best threshold
(chosen here on val); every object metric scores the objects.

The output folder (written atomically, with the optional report figures)::

    per_image.csv   one row per image: scalar metrics and <metric>@<IoU threshold> columns
    summary.json    the split (and whether its val images double as test), means over images,
                    their std, per-threshold curves (mean and pooled), the post-processing used,
                    the thresholds and the inputs
    overlays/       <name>.png for the first ``overlays`` images: the image with ground-truth
                    contours (green), predicted contours (magenta), yellow where they agree

Every prediction is checked to exist before any work starts, so a missing one fails at once,
names the file and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unetflow import postprocess
from unetflow.instances import InstanceRule, remove_small
from unetflow.io.errors import InputError
from unetflow.io.ome_zarr import open_ome_image
from unetflow.metrics import count_scores, evaluate_segmentation, pixel_metrics, threshold_key
from unetflow.postprocess import tuned_objects
from unetflow.progress import track
from unetflow.plots.evaluation import overlay_rgb, plot_metrics, plot_overlays, save_rgb
from unetflow.store import (
    IMAGES,
    LABELS,
    StoreError,
    atomic_output,
    open_store,
    split_names,
    store_meta,
    val_doubles_as_test,
    verify_store,
)

log = logging.getLogger(__name__)

PREDICTION_SUFFIX = ".ome.zarr"
SCALAR_METRICS = (
    "pixel_error",
    "fg_iou",
    "fg_dice",
    "rand_error",
    "rand_precision",
    "rand_recall",
    "vi_split",
    "vi_merge",
    "seg",
    "mean_ap",
)
CURVE_METRICS = ("precision", "recall", "f1", "ap", "pq")


def prediction_paths(pred_dir: str | Path, names: Sequence[str], split: str) -> list[Path]:
    """``<pred_dir>/<name>.ome.zarr`` of every image, after checking that all of them exist."""
    pred_dir = Path(pred_dir)
    expected = f"one <name>{PREDICTION_SUFFIX} per image of the {split!r} split, as `unetflow predict` writes"
    if not pred_dir.is_dir():
        raise InputError(pred_dir, "prediction folder does not exist", expected)
    paths = [pred_dir / f"{name}{PREDICTION_SUFFIX}" for name in names]
    missing = [path for path in paths if not path.exists()]
    if missing:
        first = missing[0].name[: -len(PREDICTION_SUFFIX)]
        more = f" (and {len(missing) - 1} more: {', '.join(p.name for p in missing[1:4])})" if len(missing) > 1 else ""
        raise InputError(missing[0], f"missing prediction for image {first!r}{more}", expected)
    return paths


def postprocess_settings(settings: dict[str, Any], tuned: dict[str, Any] | None) -> dict[str, Any]:
    """How objects were formed, as recorded in summary.json and shown in the report."""
    if settings["postprocess"] == "tuned":
        if tuned is None:
            return {"method": "tuned", "tuned": None, "note": "no val split of its own: default thresholds, min_size 0"}
        described = {"method": "tuned", "objective": tuned["objective"], "tuned": tuned["best"], "defaults": tuned["defaults"]}
        if "pixel" in tuned:
            described["pixel_metrics"] = {"foreground_threshold": tuned["pixel"]["foreground_threshold"]}
        return described
    described = {"method": settings["postprocess"], "min_size": settings["min_size"]}
    if settings["postprocess"] == "watershed":
        described["watershed"] = dict(settings["watershed"])
    return described


def predicted_segmentation(
    path: Path, name: str, shape: tuple[int, ...], settings: dict[str, Any], tuned: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The objects of prediction ``path`` of image ``name`` after the configured post-processing
    (``tuned``: the tuned.json of the tune stage, for ``postprocess: tuned``), and the foreground
    mask the pixel metrics score when the tuned choice has a pixel threshold of its own (else None:
    they score the objects). The probabilities are read once for both."""
    try:
        image = open_ome_image(path)
        verify_store(image.group, path)
        instances = image.label("instances").levels[0]
    except StoreError as exc:
        raise InputError(path, f"not a readable prediction ({exc})", "an OME-Zarr image written by `unetflow predict`") from exc
    source = image.attrs.get("image")
    if source is not None and source != name:
        raise InputError(path, f"is the prediction of image {source!r}, not of {name!r}", f"the prediction of {name!r}")
    if tuple(instances.shape) != tuple(shape):
        problem = f"prediction is {tuple(instances.shape)} but the ground truth of {name!r} is {tuple(shape)}"
        raise InputError(path, problem, "the same (Y, X) size")
    recompute = settings["postprocess"] == "watershed" or (settings["postprocess"] == "tuned" and tuned is not None)
    if not recompute:
        objects = remove_small(np.asarray(instances[...]), 0 if settings["postprocess"] == "tuned" else settings["min_size"])
        return objects, None
    probabilities = image.levels[0]
    if probabilities.ndim != 3 or probabilities.shape[0] < 2:
        expected = "(classes >= 2, Y, X) with class 0 = background"
        raise InputError(path, f"probabilities have shape {probabilities.shape}", expected)
    if settings["postprocess"] == "tuned":
        grown = image.attrs.get("instances", {})
        recipe = InstanceRule(grow=int(grown.get("grow", 0)), expand=int(grown.get("expand", 0)))
        values = np.asarray(probabilities[...], dtype=np.float32)
        pixel = tuned.get("pixel")
        foreground = None if pixel is None else 1.0 - values[0] > pixel["foreground_threshold"]
        return tuned_objects(values, recipe, tuned["best"]), foreground
    foreground_probability = 1.0 - np.asarray(probabilities[0], dtype=np.float32)
    return remove_small(postprocess.watershed(foreground_probability, **settings["watershed"]), settings["min_size"]), None


def undefined_as_null(value: Any) -> Any:
    """``value`` with every NaN (an undefined metric) replaced by None, which JSON writes as null
    (NaN itself is not JSON)."""
    if isinstance(value, dict):
        return {key: undefined_as_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [undefined_as_null(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def summarize(table: pd.DataFrame, thresholds: Sequence[float]) -> dict[str, Any]:
    """Means over images (top level, their spread under ``std``), per-threshold mean curves and
    curves from counts pooled over images. Undefined (NaN) values are skipped; a metric undefined
    on every image stays NaN.

    The mean curves weight every image equally (the DSB 2018 convention); the pooled ones weight
    every object equally, which is steadier when images hold very different numbers of objects.
    """
    curves = {m: [float(table[threshold_key(m, t)].mean()) for t in thresholds] for m in CURVE_METRICS}
    tp, fp, fn = (np.array([table[threshold_key(k, t)].sum() for t in thresholds]) for k in ("tp", "fp", "fn"))
    pooled = {"tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist()}
    pooled.update({key: np.atleast_1d(value).tolist() for key, value in count_scores(tp, fp, fn).items()})
    return {
        "n_images": len(table),
        "n_gt": int(table["n_gt"].sum()),
        "n_pred": int(table["n_pred"].sum()),
        **{m: float(table[m].mean()) for m in SCALAR_METRICS},
        "std": {m: float(table[m].std(ddof=0)) for m in SCALAR_METRICS},
        "iou_thresholds": [float(t) for t in thresholds],
        "curves": curves,
        "pooled": pooled,
    }


@dataclass(frozen=True)
class Scores:
    """What scoring a split gives: one metrics row per image and the overlays to show."""

    table: pd.DataFrame
    thresholds: list[float]
    overlays: list[tuple[str, np.ndarray]]  # (image name, RGB overlay) of the first ``overlays`` images


def score_split(
    store: Any, names: Sequence[str], paths: Sequence[Path], settings: dict[str, Any], tuned: dict[str, Any] | None
) -> Scores:
    """Score every image's post-processed prediction against its ground truth (nothing is written)."""
    thresholds = list(settings["iou_thresholds"])
    rows, overlays = [], []
    for name, path in track(list(zip(names, paths)), "evaluate", "images"):
        gt = np.asarray(store[f"{LABELS}/{name}"][...])
        pred, pixel_foreground = predicted_segmentation(path, name, gt.shape, settings, tuned)
        row = {"image": name, **evaluate_segmentation(gt, pred, thresholds)}
        if pixel_foreground is not None:
            row.update(pixel_metrics(gt > 0, pixel_foreground))
        rows.append(row)
        if len(overlays) < settings["overlays"]:
            overlays.append((name, overlay_rgb(np.asarray(store[f"{IMAGES}/{name}"][...]), gt, pred)))
    return Scores(pd.DataFrame(rows), thresholds, overlays)


def write_evaluation(
    scores: Scores,
    summary: dict[str, Any],
    out_dir: str | Path,
    plot: str | Path | None = None,
    overlay_plot: str | Path | None = None,
) -> None:
    """Write per_image.csv, summary.json and overlays/ into ``out_dir``, and the report figures,
    each atomically: all of them appear or, on an error, none."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(out_dir))
        tmp.mkdir()
        scores.table.to_csv(tmp / "per_image.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(undefined_as_null(summary), indent=2, allow_nan=False) + "\n")
        (tmp / "overlays").mkdir()
        for name, rgb in scores.overlays:
            save_rgb(rgb, tmp / "overlays" / f"{name}.png")
        if plot is not None:
            plot_metrics(summary, stack.enter_context(atomic_output(plot)))
        if overlay_plot is not None:
            first = scores.thresholds[0]
            f1 = threshold_key("f1", first)
            captions = [
                f"{name}: mean AP {row['mean_ap']:.2f}, F1 (IoU > {first:g}) {row[f1]:.2f}"
                for (name, _), (_, row) in zip(scores.overlays, scores.table.iterrows())
            ]
            plot_overlays([rgb for _, rgb in scores.overlays], captions, stack.enter_context(atomic_output(overlay_plot)))


def evaluate(
    data_store: str | Path,
    pred_dir: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    *,
    split: str = "test",
    plot: str | Path | None = None,
    overlay_plot: str | Path | None = None,
    tuned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every image of ``split`` (``score_split``); write ``out_dir`` and the figures
    atomically (``write_evaluation``).

    ``tuned`` is the tune stage's tuned.json (``unetflow.tune.load_tuned``), used by
    ``postprocess: tuned``; None there means the defaults. Returns the summary written to
    ``summary.json``.
    """
    store = open_store(data_store, "dataset")
    if not store_meta(store).get("labelled") or LABELS not in store:
        raise StoreError(f"{data_store}: has no labels; evaluation needs ground truth")
    names = split_names(store, split)
    doubled = split == "test" and val_doubles_as_test(store_meta(store).get("split", {}))
    if doubled:
        log.warning("%s has no test split of its own: its val images are scored as test", data_store)
    if not names:
        raise StoreError(f"{data_store}: the {split!r} split is empty; nothing to evaluate")
    paths = prediction_paths(pred_dir, names, split)
    scored = score_split(store, names, paths, settings, tuned)
    summary = {
        "split": split,
        "val_doubles_as_test": doubled,
        "images": names,
        "postprocess": postprocess_settings(settings, tuned),
        **summarize(scored.table, scored.thresholds),
        "inputs": {"data_store": str(data_store), "predictions": str(pred_dir)},
    }
    write_evaluation(scored, summary, out_dir, plot, overlay_plot)
    log.info(
        "%d images: pixel error %.4f, Rand error %.4f, mean AP %.3f, %s %.3f (postprocess %s)",
        len(scored.table), summary["pixel_error"], summary["rand_error"], summary["mean_ap"],
        threshold_key("f1", scored.thresholds[0]), summary["curves"]["f1"][0], settings["postprocess"],
    )
    return summary

