"""The weights stage: training targets and the paper's weight map for every labelled image.

Reads the instance labels of a dataset store and writes ``weights.zarr`` atomically, once, for
training to reuse::

    targets/<name>  uint8 (Y, X) class per pixel (``unetflow.targets``: gaps between touching
                    objects; background / object, or background / interior / boundary)
    weights/<name>  float32 (Y, X) w_c(class) + w0 exp(-(d1 + d2)^2 / 2 sigma^2) on the gapped objects

Both are computed block by block with the halo their locality needs, so a label image is never
held whole. Class weights are inverse class frequencies over the train split's targets (the
pixels the loss is averaged over); they are known only once every target is written, so the
border term is stored first and the class weights are added in a second, cheap pass.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from unetflow.io.errors import InputError
from unetflow.io.labels import connected_instances
from unetflow.progress import track
from unetflow.rescale import equivalent_diameter, object_areas, typical_diameter
from unetflow.store import (
    ATTRS_KEY,
    IMAGES,
    LABELS,
    TARGETS,
    WEIGHTS,
    atomic_output,
    checked_codecs,
    open_store,
    split_names,
    store_meta,
)
from unetflow.targets import TargetSettings
from unetflow.weights import (
    InvalidLabels,
    WeightSettings,
    add_class_weights,
    block_slices,
    class_counts,
    inverse_frequency_weights,
    target_block,
)

log = logging.getLogger(__name__)

PREVIEW_IMAGES = 3  # rows in the report figure
PREVIEW_CROP = 256  # full-resolution crop edge, so one-pixel gaps stay visible


def label_arrays(group: zarr.Group, source: Path, names: list[str], objects: str) -> dict[str, Any]:
    """Label array per image: the stored zarr arrays, or (``connected_components``) their components."""
    if not store_meta(group).get("labelled") or LABELS not in group:
        raise InputError(source, "dataset store has no labels", "a labelled dataset store from `unetflow ingest dataset`")
    stored = group[LABELS]
    arrays: dict[str, Any] = {}
    for name in names:
        where = f"{source}/{LABELS}/{name}"
        if name not in stored:
            raise InputError(where, "label array is missing", "one label array per image of a labelled store")
        array = stored[name]
        if array.ndim != 2 or not np.issubdtype(np.dtype(array.dtype), np.integer):
            raise InputError(where, f"labels have shape {array.shape}, dtype {array.dtype}", "2-D integer ids")
        arrays[name] = connected_instances(array[...] != 0) if objects == "connected_components" else array
    return arrays


def object_sizes(labels: dict[str, Any], names: list[str]) -> dict[str, float | int]:
    """Median object area and equivalent diameter over ``names`` (post-processing scales with
    them), and the typical diameter that ``predict.diameter: auto`` resamples images to.

    ``typical_diameter`` is the median over the images of each image's typical object
    (``unetflow.rescale.typical_diameter``: the object holding the median object pixel, objects cut by
    the border left out), the very statistic auto measures on an image to predict, so that an
    image like the training ones is not resampled. Counted on the stored instance labels, whole
    image by whole image (training label images are small; a labelled slide would be read whole).
    """
    areas, typical = [], []
    for name in names:
        image_labels = np.asarray(labels[name][...])
        counts = np.bincount(image_labels.ravel())[1:]
        areas.append(counts[counts > 0])
        diameter = typical_diameter(object_areas(image_labels))
        if diameter is not None:
            typical.append(diameter)
    all_areas = np.concatenate(areas) if areas else np.zeros(0)
    if all_areas.size == 0:
        return {"n_objects": 0, "median_area": 0.0, "median_diameter": 0.0, "typical_diameter": 0.0}
    median = float(np.median(all_areas))
    return {
        "n_objects": int(all_areas.size),
        "median_area": median,
        "median_diameter": equivalent_diameter(median),
        "typical_diameter": float(np.median(typical)),
    }


def _write_targets(
    labels: Any, out: zarr.Group, name: str, chunks: tuple[int, int], settings: WeightSettings, targets: TargetSettings, where: str
) -> int:
    """Store the class targets and the border term of one image, one chunk at a time; returns
    how many object pixels the gap rule turned into background."""
    arrays = {"shape": labels.shape, "chunks": chunks, "fill_value": 0, "compressors": checked_codecs()}
    classes_out = out[TARGETS].create_array(name, dtype="uint8", **arrays)
    term_out = out[WEIGHTS].create_array(name, dtype="float32", **arrays)
    gap_pixels = 0
    for ys, xs in block_slices(labels.shape, chunks):
        try:
            classes, term = target_block(labels, settings, targets, ys, xs)
        except InvalidLabels as exc:
            raise InputError(where, str(exc), "non-negative integer instance ids") from exc
        classes_out[ys, xs], term_out[ys, xs] = classes, term
        gap_pixels += int(np.count_nonzero((np.asarray(labels[ys, xs]) > 0) & (classes == 0)))
    return gap_pixels


def _add_class_weights(out: zarr.Group, name: str, class_weights: tuple[float, ...]) -> None:
    """Second pass: weights = w_c(class) + the stored border term, chunk by chunk."""
    classes, weights = out[TARGETS][name], out[WEIGHTS][name]
    for ys, xs in block_slices(weights.shape, weights.chunks):
        weights[ys, xs] = add_class_weights(classes[ys, xs], weights[ys, xs], class_weights)


def _class_weights(balance: str, out: zarr.Group, counted: list[str], n_classes: int) -> tuple[tuple[float, ...], dict[str, Any]]:
    """Class weights and how they were obtained, for the store's attributes."""
    if balance == "none":
        return (1.0,) * n_classes, {}
    counts = class_counts((out[TARGETS][name] for name in counted), n_classes, chunk=1024)
    if min(counts) == 0:
        log.warning("a class has no pixels in the counted images: class balancing disabled (all weights 1)")
    return inverse_frequency_weights(counts), {"class_counts": counts, "counted_images": counted}


def _preview(data: zarr.Group, labels: dict[str, Any], out: zarr.Group, names: list[str], path: str | Path) -> None:
    """Report PNG: a centre crop of image, labels, targets and weights for the first few images."""
    from unetflow.plots.weights import centre_crop, plot_weight_maps

    panels = []
    for name in names[:PREVIEW_IMAGES]:
        ys, xs = centre_crop(labels[name].shape, PREVIEW_CROP)
        panels.append(
            (name, data[IMAGES][name][:, ys, xs], labels[name][ys, xs], out[TARGETS][name][ys, xs], out[WEIGHTS][name][ys, xs])
        )
    plot_weight_maps(panels, path)


def compute_weights(data_store: str | Path, out_store: str | Path, config: dict[str, Any], preview: str | Path | None = None) -> Path:
    """Write the targets and weight maps of every image of ``data_store`` to ``out_store``."""
    source = Path(data_store)
    group = open_store(source, "dataset")
    names = list(store_meta(group)["names"])
    labels = label_arrays(group, source, names, config["objects"])
    targets = TargetSettings.from_config(config["target"])
    settings = WeightSettings(w0=config["w0"], sigma=config["sigma"], eps=config["eps"], border=config["border"])
    counted = [name for name in split_names(group, "train") if name in labels] or names
    log.info("truncation T = %.2f px, targets %s (%d classes, gap %d px)", settings.truncation, targets.mode, targets.n_classes, targets.gap)
    with atomic_output(out_store) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.create_group(TARGETS)
        root.create_group(WEIGHTS)
        gap_pixels = 0
        for name in track(names, "targets", "images"):
            chunks = tuple(group[LABELS][name].chunks)
            gap_pixels += _write_targets(labels[name], root, name, chunks, settings, targets, f"{source}/{LABELS}/{name}")
        class_weights, balance_attrs = _class_weights(config["class_balance"], root, counted, targets.n_classes)
        log.info("class weights %s", [round(w, 3) for w in class_weights])
        for name in names:
            _add_class_weights(root, name, class_weights)
        root.attrs[ATTRS_KEY] = {
            "kind": "weights",
            "w0": settings.w0,
            "sigma": settings.sigma,
            "eps": settings.eps,
            "truncation": settings.truncation,
            "border": settings.border,
            "objects": config["objects"],
            "target": {"mode": targets.mode, "gap": targets.gap, "boundary_width": targets.boundary_width},
            "n_classes": targets.n_classes,
            "gap_pixels": gap_pixels,
            "instances": targets.instance_rule(gaps_drawn=gap_pixels > 0),
            "object_size": object_sizes(labels, counted),
            "class_balance": config["class_balance"],
            "class_weights": list(class_weights),
            **balance_attrs,
            "names": names,
            "source": str(source),
        }
        if preview:
            _preview(group, labels, root, names, preview)
    return Path(out_store)
