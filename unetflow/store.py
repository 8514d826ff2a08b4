"""Layout of the zarr stores passed between stages, and the atomic-write helper.

Every stage reads and writes through these names, so the layout is defined once:

``data.zarr`` (ingest), a zarr v3 group::

    images/<name>   float32 (C, Y, X), pixels as acquired (normalised by the model's recipe when read)
    labels/<name>   int32 (Y, X) instance ids, 0 = background (absent for unlabelled slides)
    attrs["unetflow"] = {
        "kind": "dataset",
        "names": [...],                      # image names in ingestion order
        "split": {"train": [...], "val": [...], "test": [...]},  # test == val: val doubles as test
        "format": 2,                         # 2 = raw pixels; stores without it were normalised at ingest
        "channels": C, "labelled": bool,
        "pixel_sizes": {name: {"y", "x", "unit"} or null},  # physical pixel size per image, if known
        "provenance": {...},                 # sources, checksums, config slice, versions
    }

``weights.zarr`` (weights)::

    targets/<name>  uint8 (Y, X) training class per pixel (see ``unetflow.targets``)
    weights/<name>  float32 (Y, X) the loss weight per pixel
    attrs["unetflow"] = {"kind": "weights", "target": {...}, "n_classes", "w0", "sigma", "class_weights",
                         "object_size": {"median_area", "median_diameter", ...}, ...}

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
import hashlib
import logging
import os
import shutil
import time
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

log = logging.getLogger(__name__)

IMAGES = "images"
LABELS = "labels"
WEIGHTS = "weights"
TARGETS = "targets"
ATTRS_KEY = "unetflow"
DATASET_FORMAT = 2
"""Version of the dataset layout. 2: images hold pixels as acquired (normalisation is part of the
model, ``unetflow.normalize``). Older stores hold pixels normalised at ingest; reading them would
normalise twice, so they are refused."""


class StoreError(ValueError):
    """A store is missing, incomplete or not of the expected kind."""


def file_digest(path: str | Path, digest: Any = None) -> Any:
    """``digest`` (a new SHA-256 by default) fed with the bytes of file ``path``, 1 MiB at a time,
    so a model or a source image of any size is hashed without being read into memory whole."""
    digest = hashlib.sha256() if digest is None else digest
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def _remove(path: Path, attempts: int = 5) -> None:
    """Delete a file or folder, retrying briefly: when a parallel write failed, dask may still be
    finishing other chunk writes into the folder while it is removed. A failure to clean up is
    logged, never raised, so it cannot hide the error that made the write fail."""
    for attempt in range(attempts):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if not path.exists() and not path.is_symlink():
            return
        time.sleep(0.1 * (attempt + 1))
    log.warning("could not remove %s; delete it by hand", path)


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
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
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


def image_pixel_size(group: zarr.Group, name: str) -> dict[str, Any] | None:
    """The physical pixel size of image ``name`` (None if unknown, or a store older than sizes)."""
    return store_meta(group).get("pixel_sizes", {}).get(name)


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
    pixel_sizes: Mapping[str, dict[str, Any] | None] | None = None,
) -> Path:
    """Write a dataset store atomically (see the module docstring for the layout).

    ``images`` maps names to raw (C, Y, X) numpy or dask arrays (a dask array is streamed chunk by
    chunk, so a slide larger than memory is fine); ``labels`` maps the same names to (Y, X)
    integer instance-id arrays. Images are stored as float32 pixels as acquired: normalisation
    belongs to the model (``unetflow.normalize``), so one store serves models of any recipe.
    ``pixel_sizes`` maps names to their physical pixel size (``PixelSize.to_json()``), where known.
    """
    import dask.array as da

    names = list(images)
    if labels is not None and set(labels) != set(names):
        raise StoreError("labels must have exactly the same names as images")
    split = split or {"train": names, "val": [], "test": []}
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
            "pixel_sizes": {name: (pixel_sizes or {}).get(name) for name in names},
            "provenance": provenance or {},
        }
    return path
