"""Layout of the zarr stores passed between stages, and the atomic-write helper.

Every stage reads and writes through these names, so the layout is defined once:

``data.zarr`` (ingest), a zarr v3 group::

    images/<name>   float32 (C, Y, X), pixels as acquired (normalised by the model's recipe when read)
    labels/<name>   int32 (Y, X) instance ids, 0 = background (absent for unlabelled slides)
    attrs["unetflow"] = {
        "kind": "dataset",
        "names": [...],                      # image names in ingestion order
        "split": {"train": [...], "val": [...]},
        "format": 2,                         # 2 = raw pixels; stores without it were normalised at ingest
        "channels": C, "labelled": bool,
        "provenance": {...},                 # sources, checksums, config slice, versions
    }

``weights.zarr`` (weights)::

    weights/<name>  float32 (Y, X)
    attrs["unetflow"] = {"kind": "weights", "w0", "sigma", "class_weights", ...}

Stores are written under a temporary sibling path and renamed into place only when complete, so
an interrupted or failed stage never leaves something that looks finished.

Integrity: a finished store can still be damaged later (a deleted or truncated chunk file, a
disk error), and zarr reads a missing chunk as its fill value, so a damaged store would silently
train on zeros. Every array a stage writes therefore carries a CRC32C checksum per chunk (zarr
v3's ``crc32c`` codec, checked on every decode) and holds every chunk of its grid (empty chunks
are written too, see below), and the next stage's :func:`open_store` / OME reader checks both
before using the store (:func:`verify_store`), naming the store, array and chunk.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import Crc32cCodec, ZstdCodec

#: Chunks holding only the fill value are written like any other (zarr skips them by default), so
#: a store's chunk grid is complete and a missing chunk file always means damage. Set for the
#: whole process because predict reopens its arrays chunk by chunk in other tasks and workers,
#: which all import this module.
zarr.config.set({"array.write_empty_chunks": True})

IMAGES = "images"
LABELS = "labels"
WEIGHTS = "weights"
ATTRS_KEY = "unetflow"
DATASET_FORMAT = 2
"""Version of the dataset layout. 2: images hold pixels as acquired (normalisation is part of the
model, ``unetflow.normalize``). Older stores hold pixels normalised at ingest; reading them would
normalise twice, so they are refused."""


class StoreError(ValueError):
    """A store is missing, incomplete or not of the expected kind."""


@contextlib.contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` only on success.

    On any exception the temporary path is deleted and ``final`` is left untouched, so a failed
    run loses nothing that existed before and leaves nothing half-written. A run killed outright
    (kill -9, out of memory) cannot clean up, so temporaries of ``final`` left by earlier runs are
    removed first: only one run writes an output at a time (Snakemake locks its outputs), so any
    such sibling belongs to a dead run.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
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


def checked_codecs(compressor: BytesBytesCodec | None = None) -> tuple[BytesBytesCodec, ...]:
    """Codecs of every array a stage writes: ``compressor`` (zarr's default zstd when None), then
    a CRC32C checksum of the compressed chunk, so damage is caught before decompression."""
    return (compressor or ZstdCodec(level=0), Crc32cCodec())


def _chunk_problem(array: zarr.Array, index: tuple[int, ...], file: Path, checksummed: bool) -> str | None:
    """What is wrong with one stored chunk, or None when it is present and decodes."""
    if checksummed and not file.is_file():
        return "is missing"
    try:
        array.get_block_selection(index)
    except Exception as exc:  # codecs raise many types for torn or corrupt bytes
        return f"is damaged ({type(exc).__name__}: {exc})"
    return None


def verify_array(array: zarr.Array, store: Path) -> None:
    """Check every chunk of ``array`` (of the store at ``store``): present and intact.

    Presence is checked for arrays with the crc32c codec only: those are written by unetflow with
    every chunk (the module docstring), while other zarr arrays may leave empty chunks out.
    """
    checksummed = any(isinstance(codec, Crc32cCodec) for codec in array.compressors)
    folder = store / array.path
    for index in np.ndindex(*array.cdata_shape):
        file = folder / array.metadata.encode_chunk_key(index)
        problem = _chunk_problem(array, index, file, checksummed)
        if problem:
            raise StoreError(
                f"{store}: array {array.path!r}, chunk {index} ({file}) {problem}; the store is damaged, "
                "delete it and rerun the stage that wrote it"
            )


_VERIFIED: set[tuple[str, int]] = set()


def verify_store(group: zarr.Group, path: str | Path) -> None:
    """:func:`verify_array` on every array of the store at ``path``, once per process and version.

    A stage opens its input stores several times; a store that passed stays verified in this
    process until it is rewritten (its root ``zarr.json`` gets a new modification time).
    """
    path = Path(path)
    key = (str(path.resolve()), (path / "zarr.json").stat().st_mtime_ns)
    if key in _VERIFIED:
        return
    for _, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            verify_array(node, path)
    _VERIFIED.add(key)


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
    """Open a finished unetflow store read-only, checking that it is of ``kind`` and intact."""
    path = Path(path)
    group = open_group_readonly(path)
    meta = group.attrs.get(ATTRS_KEY)
    if meta is None:
        raise StoreError(f"{path}: not a unetflow store (no '{ATTRS_KEY}' attributes)")
    if kind is not None and meta.get("kind") != kind:
        raise StoreError(f"{path}: expected a {kind!r} store, found {meta.get('kind')!r}")
    if meta.get("kind") == "dataset" and meta.get("format", 1) < DATASET_FORMAT:
        raise StoreError(
            f"{path}: written by an older unetflow that stored normalised pixels (store format"
            f" {meta.get('format', 1)}, expected {DATASET_FORMAT}: pixels as acquired); re-run ingest"
            " (delete the store, then run the workflow or 'unetflow ingest' again)"
        )
    verify_store(group, path)
    return group


def store_meta(group: zarr.Group) -> dict[str, Any]:
    """The unetflow attributes of an open store."""
    return dict(group.attrs[ATTRS_KEY])


def split_names(group: zarr.Group, split: str) -> list[str]:
    """Image names of a split ('train', 'val') or 'all' for every image."""
    meta = store_meta(group)
    if split == "all":
        return list(meta["names"])
    try:
        return list(meta["split"][split])
    except KeyError as exc:
        raise StoreError(f"store has no split {split!r}; known: {sorted(meta.get('split', {}))}") from exc


def as_dask(image: Any, chunk: int) -> Any:
    """A (C, Y, X) dask view of ``image`` chunked for streaming."""
    import dask.array as da

    arr = image if isinstance(image, da.Array) else da.from_array(image, chunks=(-1, chunk, chunk))
    return arr.rechunk((arr.shape[0], chunk, chunk))


def write_dataset(
    path: str | Path,
    images: Mapping[str, Any],
    labels: Mapping[str, Any] | None = None,
    *,
    split: dict[str, list[str]] | None = None,
    chunk: int = 512,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write a dataset store atomically (see the module docstring for the layout).

    ``images`` maps names to raw (C, Y, X) numpy or dask arrays (a dask array is streamed chunk by
    chunk, so a slide larger than memory is fine); ``labels`` maps the same names to (Y, X)
    integer instance-id arrays. Images are stored as float32 pixels as acquired: normalisation
    belongs to the model (``unetflow.normalize``), so one store serves models of any recipe.
    """
    import dask.array as da

    names = list(images)
    if labels is not None and set(labels) != set(names):
        raise StoreError("labels must have exactly the same names as images")
    split = split or {"train": names, "val": []}
    path = Path(path)
    with atomic_output(path) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        img_group = root.create_group(IMAGES)
        lab_group = root.create_group(LABELS) if labels is not None else None
        channels = None
        for name in names:
            arr = as_dask(images[name], chunk)
            channels = arr.shape[0]
            target = img_group.create_array(
                name,
                shape=arr.shape,
                chunks=(arr.shape[0], chunk, chunk),
                dtype="float32",
                fill_value=0.0,
                compressors=checked_codecs(),
            )
            da.store(arr.astype("float32"), target, lock=False)
            if lab_group is not None:
                lab = np.asarray(labels[name], dtype="int32")
                lab_target = lab_group.create_array(
                    name, shape=lab.shape, chunks=(chunk, chunk), dtype="int32", fill_value=0, compressors=checked_codecs()
                )
                lab_target[...] = lab
        root.attrs[ATTRS_KEY] = {
            "kind": "dataset",
            "names": names,
            "split": split,
            "format": DATASET_FORMAT,
            "channels": channels,
            "labelled": labels is not None,
            "chunk": chunk,
            "provenance": provenance or {},
        }
    return path
