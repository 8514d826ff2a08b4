"""Pieces every report figure shares: how an image and a label image are shown, and saving."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from unetflow.store import atomic_output  # noqa: E402


def display_image(image: np.ndarray) -> np.ndarray:
    """A (C, Y, X) image as float RGB (Y, X, 3) in [0, 1]: channels 0-2 as RGB when there are
    three, else channel 0 as grey, each stretched between its 1st and 99th percentile, so that
    stored pixels of any range (8/16-bit, float) show their contrast."""
    image = np.asarray(image, dtype=np.float32)
    channels = image[:3] if image.shape[0] == 3 else image[:1]
    lo, hi = np.percentile(channels, [1, 99], axis=(1, 2), keepdims=True)
    stretched = np.clip((channels - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return np.repeat(stretched, 3 // stretched.shape[0], axis=0).transpose(1, 2, 0)


def label_colours(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB image with a random colour per object (neighbours rarely share one), black background."""
    ids, inverse = np.unique(labels, return_inverse=True)
    palette = np.random.default_rng(seed).uniform(0.25, 1.0, size=(ids.size, 3))
    palette[ids == 0] = 0.0
    return palette[inverse.reshape(labels.shape)]


def save_figure(
    fig: plt.Figure, path: str | Path, dpi: int = 100, rect: tuple[float, float, float, float] = (0, 0, 1, 1)
) -> Path:
    """Save ``fig`` as PNG atomically (a report never picks up half a file) and close it.

    ``rect`` is the part of the figure ``tight_layout`` may fill (room left for a legend).
    """
    try:
        fig.tight_layout(rect=rect)
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
