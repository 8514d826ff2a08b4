"""The ingest stage: raw files (or the synthetic generator) -> one zarr store of pixels as acquired.

A dataset store holds every labelled image with its instance labels and a train/val/test split;
a slide store holds one (possibly huge) unlabelled image. Both record where the data came from
(paths, SHA-256 checksums, the config slice, library versions) so a result can be traced back.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from unetflow import __version__
from unetflow.io.errors import InputError
from unetflow.io.images import to_channels_first
from unetflow.io.pixel_size import chosen_pixel_size
from unetflow.io.tiff_metadata import tiff_pixel_size
from unetflow.io.pixels import finite_pixels
from unetflow.io.sources import DATASET_READERS, Sample, open_tiff_lazily, open_zarr_image, zarr_pixel_size
from unetflow.store import file_digest, val_doubles_as_test, write_dataset
from unetflow.synthetic import CellStyle, make_dataset, write_giant_slide

log = logging.getLogger(__name__)
HASH_LIMIT_BYTES = 2 * 1024**3  # hashing a multi-GB slide would cost more than it tells


def sha256(path: Path) -> str | None:
    """SHA-256 of a file, or None for folders and files above HASH_LIMIT_BYTES."""
    if not path.is_file() or path.stat().st_size > HASH_LIMIT_BYTES:
        return None
    return file_digest(path).hexdigest()


def _provenance(sources: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    versions = {pkg: metadata.version(pkg) for pkg in ("numpy", "zarr", "tifffile", "scikit-image")}
    versions["unetflow"] = __version__  # the checkout's, also where the package is not installed
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "sources": [{"path": src, "sha256": sha256(Path(src))} for src in sources],
        "versions": versions,
    }


def _held_out(n: int, key: str, split: dict[str, Any], free: list[int], rng_order: list[int]) -> list[int]:
    """Indices of one hold-out (``val`` or ``test``): explicit ``<key>_indices``, else a seeded
    ``<key>_fraction`` of all ``n`` images (at least one when > 0) drawn from ``free``."""
    explicit = split.get(f"{key}_indices")
    if explicit is not None:
        bad = [i for i in explicit if i >= n]
        if bad:
            raise InputError(
                None, f"dataset.split.{key}_indices {bad} out of range for {n} images", f"indices 0..{n - 1}"
            )
        return sorted(set(explicit))
    fraction = split.get(f"{key}_fraction") or 0
    if fraction <= 0:
        return []
    count = min(max(1, round(n * fraction)), len(free) - 1)  # one image always stays for training
    if count < 1:
        raise InputError(
            None,
            f"dataset.split.{key}_fraction is {fraction} but {len(free)} of the {n} images are left for it",
            "enough images to hold one out and train on another, or a zero fraction",
        )
    return sorted([i for i in rng_order if i in free][:count])


def make_split(names: list[str], split: dict[str, Any]) -> dict[str, list[str]]:
    """Train / val / test split from explicit indices or seeded fractions; disjoint and deterministic.

    val picks the best checkpoint (and tunes post-processing); test is scored once for the
    reported figures. Test images are drawn first, then val from the rest, both from one seeded
    permutation. Without any test setting (``test_fraction`` and ``test_indices`` null, the form
    of configs older than the test split) the val images double as test: ``test`` then lists
    the same names as ``val`` and ``val_doubles_as_test`` says so downstream.
    ``test_fraction: 1.0`` makes an evaluate-only dataset (every image is test, nothing to train
    on; training refuses it). Asking for a hold-out the data cannot give, or leaving a
    non-evaluate-only dataset without training images, is an error rather than a silent change.
    """
    n = len(names)
    evaluate_only = split.get("test_fraction") == 1
    if evaluate_only and (split.get("val_indices") or split.get("test_indices") is not None):
        raise InputError(
            None, "dataset.split.test_fraction 1.0 (evaluate-only) cannot be combined with val/test indices",
            "test_fraction: 1.0 alone",
        )
    if evaluate_only:
        return {"train": [], "val": [], "test": list(names)}
    legacy = split.get("test_fraction") is None and split.get("test_indices") is None
    order = np.random.default_rng(split["seed"]).permutation(n).tolist()
    test = [] if legacy else _held_out(n, "test", split, list(range(n)), order)
    val = _held_out(n, "val", split, [i for i in range(n) if i not in test], order)
    overlap = sorted(set(val) & set(test))
    if overlap:
        raise InputError(None, f"dataset.split: images {overlap} are in both val_indices and test_indices", "disjoint sets")
    if len(set(val) | set(test)) >= n:
        raise InputError(
            None,
            f"the split holds out all {n} images and leaves none for training",
            "at least one training image (or test_fraction: 1.0 for an evaluate-only dataset)",
        )
    held = set(val) | set(test)
    return {
        "train": [nm for i, nm in enumerate(names) if i not in held],
        "val": [names[i] for i in val],
        "test": [names[i] for i in (val if legacy else test)],
    }


def read_dataset(settings: dict[str, Any]) -> list[Sample]:
    """All samples of the configured dataset, labels converted to instance ids."""
    if settings["format"] == "synthetic":
        syn = settings["synthetic"]
        style = CellStyle(syn["cell_radius"], syn["membrane_width"], syn["noise"])
        pairs = make_dataset(syn["n_images"], syn["size"], syn["seed"], style)
        return [
            Sample(f"synthetic_{i:04d}", to_channels_first(img, settings["channels"], settings["rgb_rule"], "synthetic"), lab)
            for i, (img, lab) in enumerate(pairs)
        ]
    return DATASET_READERS[settings["format"]](settings)


def ingest_dataset(settings: dict[str, Any], out: str | Path) -> Path:
    """Read the dataset described by the ``dataset`` config section and write its store."""
    samples = read_dataset(settings)
    for sample in samples:
        sample.image = finite_pixels(sample.image, settings["non_finite"], sample.sources[0] if sample.sources else sample.name)
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InputError(settings["path"], f"duplicate image names {dupes[:5]}", "unique file stems")
    split = make_split(names, settings["split"])
    sources = [src for s in samples for src in s.sources]
    log.info(
        "ingesting %d images (%d train, %d val, %d test%s) into %s", len(samples), len(split["train"]),
        len(split["val"]), len(split["test"]), ", val doubles as test" if val_doubles_as_test(split) else "", out,
    )
    return write_dataset(
        out,
        {s.name: s.image for s in samples},
        {s.name: s.label for s in samples},
        split=split,
        chunk=settings["chunk"],
        provenance=_provenance(sources, settings),
        pixel_sizes={s.name: _size_json(settings.get("pixel_size"), s.pixel_size, s.name) for s in samples},
    )


def _size_json(configured: dict[str, Any] | None, found: Any, source: str) -> dict[str, Any] | None:
    size = chosen_pixel_size(configured, found, source)
    return size.to_json() if size else None


def ingest_slide(
    slide: dict[str, Any], channels: int, rgb_rule: str, out: str | Path, non_finite: dict[str, Any] | None = None
) -> Path:
    """Write one unlabelled slide store, streaming: the slide is never held in memory whole.

    Pixels are stored as acquired (after the channel conversion); ``predict`` normalises them
    with the model's recipe and the whole slide's statistics. Non-finite pixels follow
    ``non_finite`` (the dataset's ``non_finite`` section; None refuses them), chunk by chunk. A
    synthetic slide is first generated as a raw zarr array beside
    ``out`` (removed afterwards), then ingested like any zarr source.
    """
    out = Path(out)
    raw_path = None
    found = None
    if slide["format"] == "synthetic":
        raw_path = out.with_name(f".{out.name}.raw.zarr")
        write_giant_slide(raw_path, slide["size"], slide["chunk"], slide["seed"])
        image, source = open_zarr_image(raw_path), f"synthetic:seed={slide['seed']},size={slide['size']}"
    else:
        if not slide["path"]:
            raise InputError(None, f"slide {slide['name']!r} has no path", "slides[].path for format tiff/zarr")
        source = slide["path"]
        if slide["format"] == "tiff":
            image, found = open_tiff_lazily(source), tiff_pixel_size(source)
        else:
            image, found = open_zarr_image(source), zarr_pixel_size(source)
    try:
        image = finite_pixels(to_channels_first(image, channels, rgb_rule, source).astype("float32"), non_finite, source)
        return write_dataset(
            out,
            {slide["name"]: image},
            None,
            split={"train": [], "val": [], "test": []},
            chunk=slide["chunk"],
            provenance=_provenance([source], {**slide, "channels": channels, "rgb_rule": rgb_rule, "non_finite": non_finite}),
            pixel_sizes={slide["name"]: _size_json(slide.get("pixel_size"), found, source)},
        )
    finally:
        if raw_path is not None:
            shutil.rmtree(raw_path, ignore_errors=True)
