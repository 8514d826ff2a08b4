"""Report figure of the ingest stage: a few images with their instance labels, plus numbers.

A user checks here, before training anything, that images and labels line up, that binary
masks were split into the objects they expect, and that the split holds what they intended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from unetflow.plots.common import display_image, label_colours, plt, save_figure
from unetflow.store import IMAGES, LABELS, store_meta

PREVIEW_EDGE = 384  # show a full-resolution crop: membranes are a pixel or two wide


def plot_dataset_overview(group: zarr.Group, path: str | Path, n_images: int = 4) -> Path:
    """Image / labels rows for the first train and val images of a dataset store."""
    meta = store_meta(group)
    split = meta["split"]
    names = (split["train"][: max(1, n_images - 1)] + split["val"][:1])[:n_images] or meta["names"][:n_images]
    fig, axes = plt.subplots(len(names), 2, figsize=(8, 4 * len(names)), squeeze=False)
    for row, name in zip(axes, names):
        image = group[f"{IMAGES}/{name}"]
        crop = (slice(0, min(PREVIEW_EDGE, image.shape[-2])), slice(0, min(PREVIEW_EDGE, image.shape[-1])))
        which = "val" if name in split["val"] else "train"
        row[0].imshow(display_image(image[(slice(None), *crop)]))
        row[0].set_title(f"{name} ({which}), {image.shape[-2]}x{image.shape[-1]}")
        if meta["labelled"]:
            labels = group[f"{LABELS}/{name}"][crop]
            row[1].imshow(label_colours(labels), interpolation="nearest")
            row[1].set_title(f"{np.unique(labels[labels > 0]).size} objects in view")
        for ax in row:
            ax.set_axis_off()
    fig.suptitle(
        f"{len(meta['names'])} images ({len(split['train'])} train / {len(split['val'])} val), "
        f"{meta['channels']} channel(s), shown stretched between their 1st and 99th percentiles"
    )
    return save_figure(fig, path)
