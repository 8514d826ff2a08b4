"""``unetflow weights DATA_STORE OUT_STORE``: the paper's weight map for every labelled image.

Reads the instance labels of a dataset store, computes ``w_c + w0 exp(-(d1+d2)^2 / 2 sigma^2)``
block by block (see ``unetflow.weights``) and writes ``weights.zarr`` atomically, once, for
training to reuse. Class weights are inverse frequencies over the train split (the pixels the
loss is averaged over), recorded in the store's attributes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from unetflow.commands import add_settings_arguments, settings_from_args
from unetflow.io.errors import InputError
from unetflow.io.labels import connected_instances
from unetflow.store import (
    ATTRS_KEY,
    IMAGES,
    LABELS,
    WEIGHTS,
    atomic_output,
    checked_codecs,
    open_store,
    split_names,
    store_meta,
)
from unetflow.weights import (
    InvalidLabels,
    WeightSettings,
    block_slices,
    class_counts,
    inverse_frequency_weights,
    weight_block,
)

log = logging.getLogger(__name__)

PREVIEW_IMAGES = 3  # rows in the report figure
PREVIEW_CROP = 256  # full-resolution crop edge, so one-pixel gaps stay visible


def _label_arrays(group: zarr.Group, source: Path, names: list[str], objects: str) -> dict[str, Any]:
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


def _class_weights(
    config: dict[str, Any], group: zarr.Group, labels: dict[str, Any], chunk: int
) -> tuple[tuple[float, float], dict[str, Any]]:
    """(w_background, w_foreground) and how they were obtained, for the store's attributes."""
    if config["class_balance"] == "none":
        return (1.0, 1.0), {}
    counted = [name for name in split_names(group, "train") if name in labels] or list(labels)
    background, foreground = class_counts((labels[name] for name in counted), chunk)
    if background == 0 or foreground == 0:
        log.warning("a class has no pixels in the counted images: class balancing disabled (weights 1, 1)")
    return inverse_frequency_weights(background, foreground), {
        "class_counts": [background, foreground],
        "counted_images": counted,
    }


def _write_map(
    labels: Any, out: zarr.Group, name: str, chunks: tuple[int, int], settings: WeightSettings, where: str
) -> None:
    """Compute and store one weight map one output chunk at a time (the image is never whole)."""
    target = out.create_array(
        name, shape=labels.shape, chunks=chunks, dtype="float32", fill_value=0.0, compressors=checked_codecs()
    )
    for ys, xs in block_slices(labels.shape, chunks):
        try:
            target[ys, xs] = weight_block(labels, settings, ys, xs)
        except InvalidLabels as exc:
            raise InputError(where, str(exc), "non-negative integer instance ids") from exc


def _preview(data: zarr.Group, labels: dict[str, Any], weights: zarr.Group, names: list[str], path: str) -> None:
    """Report PNG: a centre crop of image, labels and weights for the first few images."""
    from unetflow.plots.weights import centre_crop, plot_weight_maps

    panels = []
    for name in names[:PREVIEW_IMAGES]:
        ys, xs = centre_crop(labels[name].shape, PREVIEW_CROP)
        panels.append((name, data[IMAGES][name][:, ys, xs], labels[name][ys, xs], weights[name][ys, xs]))
    plot_weight_maps(panels, path)


def run(args: argparse.Namespace) -> None:
    config = settings_from_args(args, "weights")
    source = Path(args.data_store)
    group = open_store(source, "dataset")
    names = list(store_meta(group)["names"])
    labels = _label_arrays(group, source, names, config["objects"])
    stored_chunks = {name: tuple(group[LABELS][name].chunks) for name in names}
    count_chunk = max((c for chunks in stored_chunks.values() for c in chunks), default=1)
    class_weights, balance_attrs = _class_weights(config, group, labels, count_chunk)
    settings = WeightSettings(
        w0=config["w0"], sigma=config["sigma"], eps=config["eps"], border=config["border"], class_weights=class_weights
    )
    log.info("truncation T = %.2f px, class weights (bg, fg) = %s", settings.truncation, class_weights)
    with atomic_output(args.out_store) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        out = root.create_group(WEIGHTS)
        for name in tqdm(names, desc="weights", unit="image"):
            _write_map(labels[name], out, name, stored_chunks[name], settings, f"{source}/{LABELS}/{name}")
        root.attrs[ATTRS_KEY] = {
            "kind": "weights",
            "w0": settings.w0,
            "sigma": settings.sigma,
            "eps": settings.eps,
            "truncation": settings.truncation,
            "border": settings.border,
            "objects": config["objects"],
            "class_balance": config["class_balance"],
            "class_weights": list(class_weights),
            **balance_attrs,
            "names": names,
            "source": str(source),
        }
        if args.preview:
            _preview(group, labels, out, names, args.preview)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="compute the U-Net paper's border-weighted loss map for every labelled image",
        description=__doc__,
    )
    parser.add_argument("data_store", metavar="DATA_STORE", help="labelled dataset store (data.zarr)")
    parser.add_argument("out_store", metavar="OUT_STORE", help="weights store to write (atomically)")
    parser.add_argument("--preview", metavar="PNG", help="also write the report figure (image / labels / weights)")
    add_settings_arguments(parser, "weights")
    parser.set_defaults(func=run)
