"""The ingest stage: raw files (or the synthetic generator) -> one zarr store of pixels as acquired.

A dataset store holds every labelled image with its instance labels and a train/validation split;
a slide store holds one (possibly huge) unlabelled image. Both record where the data came from
(paths, SHA-256 checksums, the config slice, library versions) so a result can be traced back.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from unetflow.io.errors import InputError
from unetflow.io.images import to_channels_first
from unetflow.io.pixels import finite_pixels
from unetflow.io.sources import DATASET_READERS, Sample, open_tiff_lazily, open_zarr_image
from unetflow.store import write_dataset
from unetflow.synthetic import CellStyle, make_dataset, write_giant_slide

log = logging.getLogger(__name__)
HASH_LIMIT_BYTES = 2 * 1024**3  # hashing a multi-GB slide would cost more than it tells


def sha256(path: Path) -> str | None:
    """SHA-256 of a file, or None for folders and files above HASH_LIMIT_BYTES."""
    if not path.is_file() or path.stat().st_size > HASH_LIMIT_BYTES:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance(sources: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    versions = {pkg: metadata.version(pkg) for pkg in ("unetflow", "numpy", "zarr", "tifffile", "scikit-image")}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "sources": [{"path": src, "sha256": sha256(Path(src))} for src in sources],
        "versions": versions,
    }


def make_split(names: list[str], split: dict[str, Any]) -> dict[str, list[str]]:
    """Train/validation split: explicit ``val_indices``, or a seeded random ``val_fraction``.

    ``val_fraction: 0`` means no hold-out (the workflow then skips evaluation); asking for a
    hold-out that the data cannot give is an error rather than a silently empty split.
    """
    n = len(names)
    if split["val_indices"] is not None:
        bad = [i for i in split["val_indices"] if i >= n]
        if bad:
            raise InputError(None, f"dataset.split.val_indices {bad} out of range for {n} images", f"indices 0..{n - 1}")
        val = sorted(set(split["val_indices"]))
    elif split["val_fraction"] > 0:
        if n < 2:
            raise InputError(
                None,
                f"dataset.split.val_fraction is {split['val_fraction']} but the dataset has {n} image",
                "at least 2 images to hold one out, or val_fraction: 0 (train only, no evaluation)",
            )
        n_val = min(n - 1, max(1, round(n * split["val_fraction"])))
        val = sorted(np.random.default_rng(split["seed"]).permutation(n)[:n_val].tolist())
    else:
        val = []
    if len(val) == n:
        raise InputError(None, "the split leaves no training image", "at least one training image")

    return {"train": [nm for i, nm in enumerate(names) if i not in val], "val": [names[i] for i in val]}


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
    log.info("ingesting %d images (%d train, %d val) into %s", len(samples), len(split["train"]), len(split["val"]), out)
    return write_dataset(
        out,
        {s.name: s.image for s in samples},
        {s.name: s.label for s in samples},
        split=split,
        chunk=settings["chunk"],
        provenance=_provenance(sources, settings),
    )


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
    if slide["format"] == "synthetic":
        raw_path = out.with_name(f".{out.name}.raw.zarr")
        write_giant_slide(raw_path, slide["size"], slide["chunk"], slide["seed"])
        image, source = open_zarr_image(raw_path), f"synthetic:seed={slide['seed']},size={slide['size']}"
    else:
        if not slide["path"]:
            raise InputError(None, f"slide {slide['name']!r} has no path", "slides[].path for format tiff/zarr")
        source = slide["path"]
        image = open_tiff_lazily(source) if slide["format"] == "tiff" else open_zarr_image(source)
    try:
        image = finite_pixels(to_channels_first(image, channels, rgb_rule, source).astype("float32"), non_finite, source)
        return write_dataset(
            out,
            {slide["name"]: image},
            None,
            split={"train": [], "val": []},
            chunk=slide["chunk"],
            provenance=_provenance([source], {**slide, "channels": channels, "rgb_rule": rgb_rule, "non_finite": non_finite}),
        )
    finally:
        if raw_path is not None:
            shutil.rmtree(raw_path, ignore_errors=True)
