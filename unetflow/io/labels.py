"""Turning label images of any common convention into instance ids (0 = background).

Binary masks (ISBI 2012: 255 = cell interior, 0 = membrane) become instances through the
4-connected components of the foreground: 4-connectivity keeps cells that touch only diagonally
across a one-pixel membrane apart, which is what a membrane label means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from unetflow.io.errors import InputError

FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


def check_integer_labels(label: np.ndarray, source: str | Path) -> np.ndarray:
    """Validate that ``label`` holds non-negative integers (integer-valued floats are accepted)."""
    if label.ndim == 3 and label.shape[-1] in (3, 4) and np.all(label[..., :3] == label[..., :1]):
        label = label[..., 0]  # grey masks saved as RGB(A)
    if label.ndim != 2:
        raise InputError(source, f"label image has shape {label.shape}", "a 2-D (Y, X) label image")
    if label.dtype.kind == "b":
        return label.astype(np.int64)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise InputError(source, "label image holds non-integer values", "integer class or instance ids")
        label = label.astype(np.int64)
    elif label.dtype.kind not in "iu":
        raise InputError(source, f"label image has dtype {label.dtype}", "an integer label image")
    if label.size and label.min() < 0:
        raise InputError(source, f"label image holds negative values (min {label.min()})", "ids >= 0")
    return label.astype(np.int64, copy=False)


def connected_instances(foreground: np.ndarray) -> np.ndarray:
    """Instance ids 1..N of the 4-connected components of a boolean foreground mask."""
    labels, _ = ndimage.label(foreground, structure=FOUR_CONNECTED)
    return labels.astype(np.int32)


def split_ids(label: np.ndarray) -> dict[int, int]:
    """{id: number of foreground regions} of every positive id found in more than one region.

    Regions are the 8-connected components of ``label > 0``, i.e. parts separated by background;
    8-connectivity is the lenient choice here: an object whose pixels touch only at corners is
    still one object.
    """
    regions, _ = ndimage.label(label > 0, structure=EIGHT_CONNECTED)
    pairs = np.unique(np.stack([label[regions > 0], regions[regions > 0]]), axis=1)
    ids, counts = np.unique(pairs[0], return_counts=True)
    return {int(i): int(n) for i, n in zip(ids, counts) if n > 1}


def auto_mode(label: np.ndarray, source: str | Path) -> str:
    """The mode 'auto' stands for (the rule is stated in the schema's ``dataset.labels``).

    At most two distinct values is a binary mask. More is an instance image, unless a value
    lies in several regions separated by background: an instance id names one object, so that is a binary mask
    with stray values, and guessing either way would silently merge or invent objects.
    """
    values, counts = np.unique(label, return_counts=True)
    if values.size <= 2:
        return "binary"
    split = split_ids(label)
    if split:
        shown = ", ".join(f"{v}: {c} px" for v, c in list(zip(values.tolist(), counts.tolist()))[:8])
        regions = ", ".join(f"{v} in {n} regions" for v, n in list(split.items())[:5])
        raise InputError(
            source,
            f"labels: auto cannot tell binary from instance: {values.size} values ({shown}), but value(s) "
            f"{regions}, which an instance id (one object) cannot be",
            "dataset.labels: binary (with foreground_value for the foreground value) or labels: instance",
        )
    return "instance"


def to_instances(label: np.ndarray, mode: str, foreground_value: int | None, source: str | Path) -> np.ndarray:
    """Instance-id image (int32, 0 = background) from a label image read from ``source``.

    mode 'binary' treats ``label == foreground_value`` (or any nonzero value when that is None)
    as foreground; 'instance' keeps every positive value as one object; 'auto' follows
    :func:`auto_mode`.
    """
    label = check_integer_labels(np.asarray(label), source)
    if mode == "auto":
        mode = auto_mode(label, source)
    if mode == "binary":
        foreground = label == foreground_value if foreground_value is not None else label != 0
        return connected_instances(foreground)
    if label.max(initial=0) > np.iinfo(np.int32).max:
        raise InputError(source, "instance ids exceed the int32 range", "ids < 2**31")
    return label.astype(np.int32)
