"""Layout of the zarr stores passed between stages, and the atomic-write helper.

Every stage reads and writes through these names, so the layout is defined once:

``data.zarr`` (ingest), a zarr v3 group::

    images/<name>   float32 (C, Y, X), normalised with dataset-wide statistics
    labels/<name>   int32 (Y, X) instance ids, 0 = background (absent for unlabelled slides)
    attrs["unetflow"] = {
        "kind": "dataset",
        "names": [...],                      # image names in ingestion order
        "split": {"train": [...], "val": [...], "test": [...]},  # test == val: val doubles as test
        "normalization": {"method": "zscore", "mean": [..per channel..], "std": [...]},
        "channels": C, "labelled": bool,
        "provenance": {...},                 # sources, checksums, config slice, versions
    }

``weights.zarr`` (weights)::

    weights/<name>  float32 (Y, X)
    attrs["unetflow"] = {"kind": "weights", "w0", "sigma", "class_weights", ...}

Stores are written under a temporary sibling path and renamed into place only when complete, so
an interrupted or failed stage never leaves something that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

IMAGES = "images"
LABELS = "labels"
WEIGHTS = "weights"
ATTRS_KEY = "unetflow"


class StoreError(ValueError):
    """A store is missing, incomplete or not of the expected kind."""


@contextlib.contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    On any exception the temporary path is deleted and ``final`` is left untouched, so a failed
    run loses nothing that existed before and leaves nothing half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(tmp, final)


def open_group_readonly(path: str | Path) -> zarr.Group:
    """Open any zarr group read-only, turning "missing" and "not zarr" into a StoreError."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: does not exist")
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store folder
        raise StoreError(f"{path}: not a zarr group ({exc})") from exc


def open_store(path: str | Path, kind: str | None = None) -> zarr.Group:
    """Open a finished unetflow store read-only, checking that it is of ``kind``."""
    path = Path(path)
    group = open_group_readonly(path)
    meta = group.attrs.get(ATTRS_KEY)
    if meta is None:
        raise StoreError(f"{path}: not a unetflow store (no '{ATTRS_KEY}' attributes)")
    if kind is not None and meta.get("kind") != kind:
        raise StoreError(f"{path}: expected a {kind!r} store, found {meta.get('kind')!r}")
    return group


def store_meta(group: zarr.Group) -> dict[str, Any]:
    """The unetflow attributes of an open store."""
    return dict(group.attrs[ATTRS_KEY])


def split_names(group: zarr.Group, split: str) -> list[str]:
    """Image names of a split ('train', 'val', 'test') or 'all' for every image.

    Stores written before the test split existed have none; their val images double as test.
    """
    meta = store_meta(group)
    if split == "all":
        return list(meta["names"])
    if split == "test" and "test" not in meta.get("split", {"test": None}):
        return list(meta["split"]["val"])
    try:
        return list(meta["split"][split])
    except KeyError as exc:
        raise StoreError(f"store has no split {split!r}; known: {sorted(meta.get('split', {}))}") from exc


def val_doubles_as_test(split: Mapping[str, list[str]]) -> bool:
    """Whether a store's split scores its val images as test (configs without a test split).

    Such test figures are optimistic: the same images chose the checkpoint. Summaries and the
    report say so.
    """
    return bool(split.get("val")) and list(split.get("test", split["val"])) == list(split["val"])


def _as_dask(image: Any, chunk: int) -> Any:
    """A (C, Y, X) dask view of ``image`` chunked for streaming."""
    import dask.array as da

    arr = image if isinstance(image, da.Array) else da.from_array(image, chunks=(-1, chunk, chunk))
    return arr.rechunk((arr.shape[0], chunk, chunk))


def channel_statistics(images: Mapping[str, Any], chunk: int = 1024) -> dict[str, Any]:
    """Dataset-wide per-channel mean and std of raw (C, Y, X) images, computed chunk by chunk.

    Normalising every tile with these (never with per-tile statistics) is what keeps tiled
    predictions seamless.
    """
    import dask.array as da

    sums, sq_sums, count = None, None, 0
    for image in images.values():
        arr = _as_dask(image, chunk).astype("float64")
        s, sq = da.compute(arr.sum(axis=(1, 2)), (arr * arr).sum(axis=(1, 2)))
        sums = s if sums is None else sums + s
        sq_sums = sq if sq_sums is None else sq_sums + sq
        count += arr.shape[1] * arr.shape[2]
    if count == 0 or sums is None:
        raise StoreError("cannot compute statistics of an empty dataset")
    mean = sums / count
    std = np.sqrt(np.maximum(sq_sums / count - mean * mean, 0.0))
    std = np.where(std > 1e-12, std, 1.0)
    return {"method": "zscore", "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


def write_dataset(
    path: str | Path,
    images: Mapping[str, Any],
    labels: Mapping[str, Any] | None = None,
    *,
    split: dict[str, list[str]] | None = None,
    normalization: dict[str, Any] | None = None,
    chunk: int = 512,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a dataset store atomically (see the module docstring for the layout).

    ``images`` maps names to raw (C, Y, X) numpy or dask arrays (a dask array is streamed chunk by
    chunk, so a slide larger than memory is fine); ``labels`` maps the same names to (Y, X)
    integer instance-id arrays. Images are normalised with ``normalization`` (computed over all
    images when None) before storing as float32.
    """
    import dask.array as da

    names = list(images)
    if labels is not None and set(labels) != set(names):
        raise StoreError("labels must have exactly the same names as images")
    if normalization is None:
        normalization = channel_statistics(images)
    mean = np.asarray(normalization["mean"], dtype="float32")[:, None, None]
    std = np.asarray(normalization["std"], dtype="float32")[:, None, None]
    split = split or {"train": names, "val": [], "test": []}
    path = Path(path)
    with atomic_output(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        img_group = root.create_group(IMAGES)
        lab_group = root.create_group(LABELS) if labels is not None else None
        channels = None
        for name in names:
            arr = _as_dask(images[name], chunk)
            channels = arr.shape[0]
            target = img_group.create_array(
                name, shape=arr.shape, chunks=(arr.shape[0], chunk, chunk), dtype="float32", fill_value=0.0
            )
            da.store(((arr.astype("float32") - mean) / std).astype("float32"), target, lock=False)
            if lab_group is not None:
                lab = np.asarray(labels[name], dtype="int32")
                lab_target = lab_group.create_array(
                    name, shape=lab.shape, chunks=(chunk, chunk), dtype="int32", fill_value=0
                )
                lab_target[...] = lab
        root.attrs[ATTRS_KEY] = {
            "kind": "dataset",
            "names": names,
            "split": split,
            "normalization": normalization,
            "channels": channels,
            "labelled": labels is not None,
            "chunk": chunk,
            "provenance": provenance or {},
        }
    return path
