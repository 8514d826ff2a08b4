"""Report figure of the weights stage: image, labels, training target and weight map per image.

The border term lives in gaps a few pixels wide, so each row shows a full-resolution centre crop
rather than a downsampled whole image (which would also mean reading a giant image whole).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetflow.plots.common import display_image, label_colours, plt, save_figure


def centre_crop(shape: Sequence[int], size: int) -> tuple[slice, slice]:
    """(rows, cols) slices of the centred ``size`` x ``size`` window (clipped to the image)."""
    size_y, size_x = shape[-2:]
    h, w = min(size, size_y), min(size, size_x)
    y0, x0 = (size_y - h) // 2, (size_x - w) // 2
    return slice(y0, y0 + h), slice(x0, x0 + w)


TARGET_NAMES = ("background", "object", "boundary")


def plot_weight_maps(panels: Sequence[tuple[str, Any, Any, Any, Any]], path: str | Path) -> Path:
    """Write a PNG with one row per ``(name, image (C,Y,X), labels, targets, weights (Y,X))`` panel.

    Arrays should already be cropped to what is shown. The PNG is written atomically.
    """
    if not panels:
        raise ValueError("plot_weight_maps needs at least one panel")
    fig, axes = plt.subplots(len(panels), 4, figsize=(16, 4 * len(panels)), squeeze=False)
    try:  # the figure is closed on error too: a long-lived process must not leak figures
        for row, (name, image, labels, targets, weights) in zip(axes, panels):
            labels = np.asarray(labels)
            targets = np.asarray(targets)
            weights = np.asarray(weights)
            row[0].imshow(display_image(np.asarray(image, dtype=np.float32)), cmap="gray")
            row[0].set_title(f"{name}: image")
            row[1].imshow(label_colours(labels), interpolation="nearest")
            row[1].set_title(f"labels ({np.unique(labels[labels > 0]).size} objects)")
            row[2].imshow(targets, cmap="viridis", vmin=0, vmax=len(TARGET_NAMES) - 1, interpolation="nearest")
            present = [TARGET_NAMES[k] for k in np.unique(targets) if k < len(TARGET_NAMES)]
            row[2].set_title(f"target ({' / '.join(present)}; gaps between touching objects)", fontsize=9)
            shown = row[3].imshow(weights, cmap="magma", interpolation="nearest")
            row[3].set_title(f"weights (max {weights.max():.2f})")
            fig.colorbar(shown, ax=row[3], fraction=0.046, pad=0.04)
            for ax in row:
                ax.set_axis_off()
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)
