"""Random training tiles from the dataset and weights stores.

A sample is an output window placed uniformly over a training image, the input window around it
(the network's context margin on each side), and the class target and weight map under the
output window (both from the weights stage, so the loss sees exactly the gapped target the
weight map was computed on). Windows that leave the image are mirror-padded by ``unetflow.tiling.read_window``, the
same mirroring inference uses, so the valid output reaches every border pixel. Each window
is read ``border`` pixels wider on every side for the augmenter (see ``unetflow.augment``).

Which image a sample comes from is ``train.sampling``: ``image`` draws every training image
equally often (nnU-Net and Cellpose sample per case/image), so a dataset of many small crops of
one kind and a few large images of another trains on both kinds; ``area`` draws images in
proportion to their area, so every pixel is equally likely to be trained on (right for one large
homogeneous acquisition, where images are arbitrary cuts of the same thing).

Randomness comes only from the ``torch.Generator`` passed in (CPU), so a seed fixes the
sequence and the generator's state is enough to resume it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetflow.normalize import Normalization, NormalizedArray
from unetflow.rescale import Nearest, ZoomedView
from unetflow.store import IMAGES, TARGETS, WEIGHTS, StoreError, open_store, store_meta
from unetflow.tiling import read_window

PRELOAD_BYTES = 2**30
SAMPLING = ("image", "area")


def open_split(
    data_store: str | Path, weights_store: str | Path, names: list[str], normalization: Normalization
) -> list[tuple[Any, Any, Any]]:
    """(image, target, weight) arrays of ``names``; small splits are read into memory at once.

    Images come normalised by the model's (fitted) recipe, each with the statistics of the whole
    image, exactly as ``predict`` will normalise them.

    Training reads thousands of random windows, so decompressing chunks for every one of them
    would dominate; a split under ``PRELOAD_BYTES`` is loaded once instead. Larger ones stay
    lazy zarr arrays that ``read_window`` slices (and normalises) directly.
    """
    data = open_store(data_store, "dataset")
    weights = open_store(weights_store, "weights")
    if not store_meta(data).get("labelled"):
        raise StoreError(f"{data_store}: dataset has no labels; training needs a labelled dataset")
    if TARGETS not in weights:
        raise StoreError(f"{weights_store}: has no class targets (written by an older unetflow); run the weights stage again")
    triples = []
    for name in names:
        for group, key, store in ((weights, TARGETS, weights_store), (weights, WEIGHTS, weights_store)):
            if name not in group[key]:
                raise StoreError(f"{store}: no {key}/{name} (every training/validation image needs one)")
        image = data[IMAGES][name]
        triples.append(
            (NormalizedArray(image, normalization.statistics(image)), weights[TARGETS][name], weights[WEIGHTS][name])
        )
    total = sum(arr.nbytes for triple in triples for arr in triple)
    if total <= PRELOAD_BYTES:
        triples = [tuple(np.asarray(arr[...]) for arr in triple) for triple in triples]
    return triples


def at_zoom(arrays: tuple[Any, Any, Any], zoom: float) -> tuple[Any, Any, Any]:
    """An (image, target, weight) triple resampled by ``zoom`` (``train.rescale``): the image
    linearly, target and weight by nearest neighbour (a pixel keeps its class and the weight
    computed for it; at half size a 2-pixel gap between touching objects still shows). In-memory
    arrays are resampled at once; lazy ones (a split over ``PRELOAD_BYTES``) as windows are read.

    Resampled once before sampling, as nnU-Net resamples its data before augmenting, so the
    augmentation and its read border stay those of an image at its own size.
    """
    if zoom == 1.0:
        return arrays
    image, target, weight = arrays
    views = (ZoomedView(image, zoom), ZoomedView(target, zoom, Nearest), ZoomedView(weight, zoom, Nearest))
    if not all(isinstance(array, np.ndarray) for array in arrays):
        return views
    return tuple(view[..., 0 : view.shape[-2], 0 : view.shape[-1]] for view in views)  # type: ignore[return-value]


class TileSampler:
    """Draws batches of (image, label, weight) windows for a network with the given geometry."""

    def __init__(
        self,
        arrays: list[tuple[Any, Any, Any]],
        out_size: int,
        margin: int,
        border: int,
        generator: torch.Generator,
        sampling: str = "image",
    ) -> None:
        if not arrays:
            raise StoreError("no training images to sample from (is the train split empty?)")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        self.arrays = arrays
        self.out_size = out_size
        self.margin = margin
        self.border = border
        self.generator = generator
        if sampling == "area":
            shares = torch.tensor([float(lab.shape[-2] * lab.shape[-1]) for _, lab, _ in arrays], dtype=torch.float64)
        else:
            shares = torch.ones(len(arrays), dtype=torch.float64)
        self.probabilities = shares / shares.sum()

    def _origin(self, extent: int) -> int:
        """Output-window origin along an axis of length ``extent``, uniform over all placements."""
        low, high = min(0, extent - self.out_size), max(0, extent - self.out_size)
        return int(torch.randint(low, high + 1, (1,), generator=self.generator))

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch: image (N, C, in+2b, in+2b) float32, label (N, out+2b, out+2b) int64 class
        targets (``unetflow.targets``), weight (N, out+2b, out+2b) float32, as CPU tensors."""
        picks = torch.multinomial(self.probabilities, n, replacement=True, generator=self.generator)
        context = self.margin + self.border
        in_edge = self.out_size + 2 * context
        out_edge = self.out_size + 2 * self.border
        images, labels, weights = [], [], []
        for index in picks.tolist():
            image, label, weight = self.arrays[index]
            y0, x0 = self._origin(label.shape[-2]), self._origin(label.shape[-1])
            images.append(read_window(image, y0 - context, x0 - context, in_edge, in_edge))
            labels.append(read_window(label, y0 - self.border, x0 - self.border, out_edge, out_edge))
            weights.append(read_window(weight, y0 - self.border, x0 - self.border, out_edge, out_edge))
        return (
            torch.from_numpy(np.stack(images).astype(np.float32, copy=False)),
            torch.from_numpy(np.stack(labels).astype(np.int64)),
            torch.from_numpy(np.stack(weights).astype(np.float32, copy=False)),
        )
