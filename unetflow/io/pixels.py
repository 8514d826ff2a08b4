"""Non-finite pixels (NaN, +-Inf) in input images: refused, or replaced by a stated value.

One NaN pixel poisons everything computed from an image (normalisation statistics, every tile
the network sees, the loss), and the symptom shows up stages later as advice that has nothing
to do with the cause. So pixels are checked where they are read, chunk by chunk for slides,
and the error names the file, the counts and the first bad position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from unetflow.io.errors import InputError

log = logging.getLogger(__name__)


def _finite_block(block: np.ndarray, offset: tuple[int, ...], policy: dict[str, Any], source: str) -> np.ndarray:
    """``block`` (at ``offset`` in its image) checked or repaired by ``policy`` (see module doc)."""
    if block.dtype.kind not in "fc":
        return block  # integer pixels cannot be NaN or Inf
    bad = ~np.isfinite(block)
    if not bad.any():
        return block
    n_nan = int(np.count_nonzero(np.isnan(block)))
    n_inf = int(np.count_nonzero(bad)) - n_nan
    first = tuple(int(i) + o for i, o in zip(np.argwhere(bad)[0], offset))
    problem = f"{n_nan} NaN and {n_inf} infinite pixel(s) (first at (channel, y, x) = {first})"
    if policy["action"] == "refuse":
        raise InputError(
            source,
            problem,
            "finite pixel values, or dataset.non_finite.action: replace to replace them by dataset.non_finite.value",
        )
    log.warning("%s: %s replaced by %s", source, problem, policy["value"])
    return np.where(bad, np.asarray(policy["value"], dtype=block.dtype), block)


def finite_pixels(image: Any, policy: dict[str, Any] | None, source: str | Path) -> Any:
    """``image`` ((C, Y, X) numpy or dask) with non-finite pixels refused or replaced.

    ``policy`` is the ``dataset.non_finite`` config section (None: refuse, its default). A dask image is checked lazily, one
    chunk at a time as it is stored, so a slide larger than memory never has to be read twice.
    """
    source, policy = str(source), policy or {"action": "refuse"}
    if isinstance(image, da.Array):

        def check(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
            offset = tuple(start for start, _ in block_info[0]["array-location"]) if block_info else (0,) * block.ndim
            return _finite_block(block, offset, policy, source)

        return image.map_blocks(check, dtype=image.dtype)
    return _finite_block(np.asarray(image), (0,) * np.ndim(image), policy, source)
