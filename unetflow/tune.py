"""Post-processing tuned on the validation split: the thresholds and ``min_size`` that turn the
model's probabilities into the best objects, chosen on images the model did not train on.

A fixed threshold of 0.5 and no size filter fit no model in particular; choosing them by eye on
the test images makes the test figure a training figure. ``tune`` searches a grid on the val
predictions instead and writes ``tuned.json``, which evaluate (``evaluate.postprocess: tuned``)
and the slide predictions apply.

What is searched (``tune`` config section):

* ``mode: threshold`` (chunk-exact, so slides get it too): seeds = p(class 1) > seed threshold
  inside the foreground 1 - p(background) > foreground threshold, grown by the model's recipe
  (``unetflow.instances.InstanceRule``). A 3-class model searches both thresholds; a 2-class
  model's seeds are its foreground, so one threshold is searched (both set to it).
* ``mode: watershed`` (2-class models, ``tune.watershed``): the watershed of the foreground
  probability (``unetflow.postprocess.watershed``, distance relief) at each threshold and an h
  of ``h_fractions`` x the training objects' median diameter. Whole-image only: evaluate applies
  it, slides get the best ``threshold`` entry (``chunked`` in tuned.json).
* ``min_size``: ``min_size_fractions`` x the training objects' median area (the model's recipe,
  ``object_size``), applied after either mode.

With ``objective: rand`` (ISBI 2012) only the foreground threshold is searched and no size filter
applies: the challenge's protocol (Rand error over thresholds of the membrane probability).

Pixel metrics get a threshold of their own (``pixel``): the threshold of the foreground probability
1 - p(background) with the lowest val pixel error. A threshold that keeps objects apart (thin
predicted membranes, few merges) is not the one that classifies most pixels right; the ISBI 2012
challenge scored each metric at its own best threshold, and evaluate reports pixel error, foreground
IoU and Dice of this map (the objects' scores stay those of the objects).

Every candidate's objects are formed once per image and their overlaps with the truth counted
once; each ``min_size`` then only drops pairs from that table (``benchmarks/tune.py`` measures
this against forming and scoring every candidate from scratch). The val images are read once into memory
(float32 probabilities): val splits are a few dataset images, never slides.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetflow.evaluate import prediction_paths
from unetflow.instances import InstanceRule
from unetflow.io.errors import InputError
from unetflow.io.ome_zarr import open_ome_image
from unetflow.model import load_checkpoint
from unetflow.objectives import higher_is_better, scores
from unetflow.postprocess import tuned_objects
from unetflow.store import LABELS, StoreError, atomic_output, open_store, split_names
from unetflow.tuned import ENTRY_KEYS

log = logging.getLogger(__name__)


def candidates(settings: dict[str, Any], n_classes: int, object_size: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid: one entry per mode and threshold(s) (and h), each with ``min_size`` 0; the
    defaults (0.5, 0.5) are always among them, so the tuned result is never worse than them on val."""
    thresholds = sorted(set(settings["thresholds"]) | {0.5})
    rand = settings["objective"] == "rand"
    if n_classes == 2:
        pairs = [(t, t) for t in thresholds]
    else:  # rand: the protocol's one threshold, on the foreground
        pairs = [(0.5, t) for t in thresholds] if rand else list(itertools.product(thresholds, thresholds))
    entries = [
        {"mode": "threshold", "seed_threshold": s, "foreground_threshold": f, "h_distance": None, "min_size": 0}
        for s, f in pairs
    ]
    if settings["watershed"] and n_classes == 2 and not rand:
        diameter = float(object_size.get("median_diameter") or 0.0)
        hs = sorted({round(max(frac * diameter, 0.5), 2) for frac in settings["h_fractions"]})
        entries += [
            {"mode": "watershed", "seed_threshold": t, "foreground_threshold": t, "h_distance": h, "min_size": 0}
            for t, h in itertools.product(thresholds, hs)
        ]
    return entries


def min_sizes(settings: dict[str, Any], object_size: dict[str, Any]) -> list[int]:
    """``min_size`` candidates in pixels: fractions of the median object area (0 always; only 0
    for the rand objective, or when the model carries no object size)."""
    area = float(object_size.get("median_area") or 0.0)
    if settings["objective"] == "rand" or area <= 0:
        return [0]
    return sorted({0, *(int(round(frac * area)) for frac in settings["min_size_fractions"])})


def read_split(data_store: str | Path, pred_dir: str | Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, ground truth, float32 probabilities) of every image of ``split``, in memory."""
    store = open_store(data_store, "dataset")
    if LABELS not in store:
        raise StoreError(f"{data_store}: has no labels; tuning needs the val split's ground truth")
    names = split_names(store, split)
    if not names:
        raise StoreError(f"{data_store}: the {split!r} split is empty; nothing to tune on (set dataset.split.val_fraction)")
    images = []
    for name, path in zip(names, prediction_paths(pred_dir, names, split)):
        gt = np.asarray(store[f"{LABELS}/{name}"][...])
        probabilities = np.asarray(open_ome_image(path).levels[0][...], dtype=np.float32)
        if probabilities.ndim != 3 or probabilities.shape[0] < 2 or probabilities.shape[1:] != gt.shape:
            expected = f"(classes >= 2, {gt.shape[0]}, {gt.shape[1]}) probabilities, class 0 = background"
            raise InputError(path, f"probabilities have shape {probabilities.shape}", expected)
        images.append((name, gt, probabilities))
    return images


def search(
    images: Sequence[tuple[str, np.ndarray, np.ndarray]],
    recipe: InstanceRule,
    entries: Sequence[dict[str, Any]],
    sizes: Sequence[int],
    objective: str,
) -> list[dict[str, Any]]:
    """Every entry at every ``min_size``, with its objective averaged over the images (``scores``)."""
    totals = np.zeros((len(entries), len(sizes)))
    for _, gt, probabilities in images:
        for i, entry in enumerate(entries):
            totals[i] += scores(gt, tuned_objects(probabilities, recipe, entry), sizes, objective)
    return [
        {**entry, "min_size": size, "score": float(totals[i, j] / len(images))}
        for i, entry in enumerate(entries)
        for j, size in enumerate(sizes)
    ]


def pixel_threshold(images: Sequence[tuple[str, np.ndarray, np.ndarray]], thresholds: Sequence[float]) -> dict[str, Any]:
    """The foreground threshold with the lowest pixel error averaged over the val images (0.5
    unless another is strictly better), and the error at every threshold searched."""
    thresholds = sorted(set(thresholds) | {0.5})
    errors = np.zeros(len(thresholds))
    for _, gt, probabilities in images:
        foreground, truth = 1.0 - probabilities[0], gt > 0
        errors += [np.count_nonzero((foreground > t) != truth) / truth.size for t in thresholds]
    errors /= len(images)
    chosen = thresholds.index(0.5)
    if errors.min() < errors[chosen]:
        chosen = int(errors.argmin())
    return {
        "foreground_threshold": thresholds[chosen],
        "pixel_error": float(errors[chosen]),
        "grid": [{"foreground_threshold": t, "pixel_error": float(e)} for t, e in zip(thresholds, errors)],
    }


def best(rows: Sequence[dict[str, Any]], objective: str, default: dict[str, Any]) -> dict[str, Any]:
    """The best row (the first of equals, in grid order), or ``default`` unless strictly better:
    a flat objective (e.g. a model that finds nothing) keeps the defaults."""
    higher = higher_is_better(objective)
    found = max(rows, key=lambda row: row["score"]) if higher else min(rows, key=lambda row: row["score"])
    better = found["score"] > default["score"] if higher else found["score"] < default["score"]
    return found if better else default


def tune(
    model_dir: str | Path,
    data_store: str | Path,
    pred_dir: str | Path,
    out: str | Path,
    settings: dict[str, Any],
    *,
    plot: str | Path | None = None,
) -> dict[str, Any]:
    """Search the post-processing on the val predictions; write ``out`` (tuned.json) atomically."""
    try:
        checkpoint = load_checkpoint(model_dir)
    except (OSError, ValueError) as exc:
        raise InputError(model_dir, f"cannot read the model ({exc})", "a model directory written by `unetflow train`") from exc
    n_classes = int(checkpoint["config"]["n_classes"])
    recipe_meta = checkpoint.get("recipe", {})
    recipe = InstanceRule.from_recipe(recipe_meta.get("instances"))
    object_size = recipe_meta.get("object_size") or {}
    objective = settings["objective"]
    if settings["watershed"] and n_classes != 2:
        log.warning("tune.watershed applies to 2-class models; this one has %d classes: not searched", n_classes)

    started = time.perf_counter()
    images = read_split(data_store, pred_dir, "val")
    read_s = time.perf_counter() - started
    rows = search(images, recipe, candidates(settings, n_classes, object_size), min_sizes(settings, object_size), objective)
    search_s = time.perf_counter() - started - read_s
    default = next(
        r for r in rows if r["mode"] == "threshold" and r["seed_threshold"] == r["foreground_threshold"] == 0.5 and not r["min_size"]
    )
    result = {
        "objective": objective,
        "higher_is_better": higher_is_better(objective),
        "split": "val",
        "images": [name for name, _, _ in images],
        "n_classes": n_classes,
        "recipe": {**recipe.to_json(), "object_size": object_size},
        "best": best(rows, objective, default),
        "chunked": best([r for r in rows if r["mode"] == "threshold"], objective, default),
        "defaults": default,
        "pixel": pixel_threshold(images, settings["thresholds"]),
        "seconds": {"read": round(read_s, 3), "search": round(search_s, 3)},
        "grid": rows,
    }
    with contextlib.ExitStack() as stack:
        stack.enter_context(atomic_output(out)).write_text(json.dumps(result, indent=1) + "\n")
        if plot is not None:
            from unetflow.plots.tuning import plot_search

            plot_search(result, stack.enter_context(atomic_output(plot)))
    log.info(
        "%s on %d val images: %.4f at the defaults, %.4f tuned (%s); %d candidates in %.1f s; "
        "pixel error %.4f at foreground > %g",
        objective, len(images), default["score"], result["best"]["score"],
        {k: result["best"][k] for k in ENTRY_KEYS}, len(rows), search_s,
        result["pixel"]["pixel_error"], result["pixel"]["foreground_threshold"],
    )
    return result
