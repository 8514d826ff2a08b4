"""Readers for every input layout the ingest stage accepts, each yielding ``Sample`` objects.

Labelled datasets are small enough to read whole; slides are opened lazily as dask arrays (a
BigTIFF through tifffile's zarr interface, a zarr array directly) so that a slide larger than
memory is only ever touched chunk by chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from unetflow.io.errors import InputError
from unetflow.io.images import read_file, to_channels_first
from unetflow.io.labels import to_instances


@dataclass
class Sample:
    """One image (raw (C, Y, X), numpy or dask) with its instance labels, if any."""

    name: str
    image: Any
    label: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)


def _check_same_shape(image: Any, label: np.ndarray, image_src: Any, label_src: Any) -> None:
    if tuple(image.shape[-2:]) != tuple(label.shape):
        raise InputError(
            label_src,
            f"label shape {tuple(label.shape)} differs from image shape {tuple(image.shape[-2:])} of {image_src}",
            "a label image of the same height and width as its image",
        )


def _sample(name: str, image: Any, label: Any, settings: dict[str, Any], image_src: Path, label_src: Path) -> Sample:
    """Convert one raw image/label pair with the dataset settings and check they fit together."""
    image = to_channels_first(np.asarray(image), settings["channels"], settings["rgb_rule"], image_src)
    instances = to_instances(label, settings["labels"], settings["foreground_value"], label_src)
    _check_same_shape(image, instances, image_src, label_src)
    return Sample(name, image.astype(np.float32), instances, [str(image_src), str(label_src)])


def _require_path(value: str | None, what: str) -> Path:
    if not value:
        raise InputError(None, f"dataset.{what} is not set", "a path for this dataset format")
    path = Path(value)
    if not path.exists():
        raise InputError(path, "does not exist", f"the dataset's {what.replace('_', ' ')}")
    return path


def read_tiff_stack(settings: dict[str, Any]) -> list[Sample]:
    """A multi-page image TIFF and a label TIFF of equal page count (ISBI 2012 train-volume.tif)."""
    image_path = _require_path(settings["path"], "path")
    label_path = _require_path(settings["label_path"], "label_path")
    images, labels = read_file(image_path), read_file(label_path)
    if labels.ndim == 2:  # a single page: the label decides, since an RGB image is 3-D too
        images, labels = images[None], labels[None]
    if len(images) != len(labels):
        raise InputError(label_path, f"has {len(labels)} pages but {image_path} has {len(images)}", "one label page per image page")
    return [
        _sample(f"{image_path.stem}_{i:04d}", images[i], labels[i], settings, image_path, label_path)
        for i in range(len(images))
    ]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders "2" before "10" (slice numbers are rarely zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _files_by_stem(root: Path, pattern: str) -> dict[str, Path]:
    """Files matching ``pattern`` keyed by stem; two files with one stem (a.png, a.tif) are an error."""
    found: dict[str, Path] = {}
    for path in sorted(root.glob(pattern)):
        if not path.is_file():
            continue
        if path.stem in found:
            raise InputError(path, f"has the same stem as {found[path.stem]}", f"one file per stem matching {pattern!r}")
        found[path.stem] = path
    return found


def read_pairs(settings: dict[str, Any]) -> list[Sample]:
    """Image/label files in one folder tree, matched by file stem through two globs."""
    root = _require_path(settings["path"], "path")
    images = _files_by_stem(root, settings["image_glob"])
    labels = _files_by_stem(root, settings["label_glob"])
    if not images:
        raise InputError(root, f"no files match image_glob {settings['image_glob']!r}", "at least one image")
    if set(images) != set(labels):
        missing = sorted(set(images) - set(labels))
        extra = sorted(set(labels) - set(images))
        raise InputError(
            root,
            f"{len(images)} images but {len(labels)} labels; images without label: {missing[:5]}; "
            f"labels without image: {extra[:5]}",
            "one label per image with the same file stem",
        )
    return [
        _sample(stem, read_file(images[stem]), read_file(labels[stem]), settings, images[stem], labels[stem])
        for stem in sorted(images, key=natural_key)
    ]


def _dsb_instances(mask_paths: list[Path], shape: tuple[int, int]) -> np.ndarray:
    """Merge one-mask-per-object PNGs into one instance image, refusing overlapping masks."""
    label = np.zeros(shape, dtype=np.int32)
    for index, mask_path in enumerate(mask_paths, start=1):
        mask = read_file(mask_path)
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if mask.shape != shape:
            raise InputError(mask_path, f"mask shape {mask.shape} differs from image shape {shape}", "masks the size of the image")
        mask = mask > 0
        if np.any(label[mask]):
            raise InputError(mask_path, "mask overlaps an earlier mask of the same image", "non-overlapping object masks")
        label[mask] = index
    return label


def read_dsb(settings: dict[str, Any]) -> list[Sample]:
    """Kaggle Data Science Bowl 2018 layout: ``<id>/images/<id>.png`` and ``<id>/masks/*.png``."""
    root = _require_path(settings["path"], "path")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise InputError(root, "contains no sample folders", "<id>/images/<id>.png and <id>/masks/*.png")
    samples = []
    for folder in folders:
        image_path = folder / "images" / f"{folder.name}.png"
        masks = sorted((folder / "masks").glob("*.png"))
        if not image_path.is_file():
            raise InputError(image_path, "image file missing", "one image per sample folder")
        if not masks:
            raise InputError(folder / "masks", "no mask PNGs", "one mask PNG per object")
        image = to_channels_first(read_file(image_path), settings["channels"], settings["rgb_rule"], image_path)
        label = _dsb_instances(masks, tuple(image.shape[-2:]))
        samples.append(Sample(folder.name, image.astype(np.float32), label, [str(image_path), str(folder / "masks")]))
    return samples


def open_zarr_image(path: str | Path) -> da.Array:
    """Lazily open a zarr array, a zarr group holding one, or an OME-Zarr image (level 0)."""
    path = Path(path)
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(path, f"cannot be opened as zarr ({type(exc).__name__}: {exc})", "a zarr array or OME-Zarr image") from exc
    if isinstance(node, zarr.Group):
        attrs = node.attrs.asdict()
        multiscales = attrs.get("ome", attrs).get("multiscales")
        if multiscales:
            node = node[multiscales[0]["datasets"][0]["path"]]
        else:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise InputError(path, f"group holds {len(arrays)} arrays and no OME multiscales", "exactly one array")
            node = node[arrays[0]]
    array = da.from_zarr(node)
    while array.ndim > 3 and array.shape[0] == 1:  # OME-Zarr (t, c, z, y, x) with singleton axes
        array = array[0]
    if array.ndim == 4 and array.shape[1] == 1:  # (c, z=1, y, x)
        array = array[:, 0]
    return array


def open_tiff_lazily(path: str | Path) -> da.Array:
    """Open a (Big)TIFF, tiled or pyramidal, through tifffile's zarr interface without reading it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file does not exist", "a TIFF/BigTIFF slide")
    try:
        store = tifffile.imread(path, aszarr=True)
        node = zarr.open(store, mode="r")
    except Exception as exc:
        raise InputError(path, f"cannot be read as TIFF ({type(exc).__name__}: {exc})", "a readable (Big)TIFF") from exc
    if isinstance(node, zarr.Group):  # pyramidal TIFF: level 0 is full resolution
        node = node[sorted(node.array_keys())[0]]
    return da.from_zarr(node)


def read_zarr_dataset(settings: dict[str, Any]) -> list[Sample]:
    """One image from an existing zarr/OME-Zarr store and its label array (``label_path``)."""
    path = _require_path(settings["path"], "path")
    image = to_channels_first(open_zarr_image(path), settings["channels"], settings["rgb_rule"], path)
    label_path = _require_path(settings["label_path"], "label_path")  # training needs labels
    label = to_instances(np.asarray(open_zarr_image(label_path)).squeeze(), settings["labels"], settings["foreground_value"], label_path)
    _check_same_shape(image, label, path, label_path)
    return [Sample(path.stem.split(".")[0], image.astype(np.float32), label, [str(path)])]


DATASET_READERS = {"tiff_stack": read_tiff_stack, "pairs": read_pairs, "dsb": read_dsb, "zarr": read_zarr_dataset}
