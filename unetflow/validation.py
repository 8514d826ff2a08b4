"""The validation score of a model during training: weighted loss and foreground IoU over whole
validation images.

Predictions come from the predict stage's overlap-tile code (``unetflow.inference``, no dask, no
zarr output), so the score that picks ``best.pt`` is the score of the model as it will be used,
borders included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from unetflow.devices import Precision
from unetflow.inference import TilePredictor, argmax_classes, predict_region, tile_layout
from unetflow.model import UNet
from unetflow.tiling import ChunkGrid

VAL_TILE = 256  # validation output tile edge: fewer, larger tiles than training uses
VAL_CHUNK = 1024  # validation runs region by region, so a large validation image never sits whole in memory


def validation_scores(
    model: UNet, device: torch.device, precision: Precision, arrays: Sequence[tuple[Any, Any, Any]], batch_size: int
) -> tuple[float, float]:
    """Weighted loss per pixel and foreground IoU pooled over the (image, label, weight) arrays.

    Leaves ``model`` in eval mode (the predictor puts it there).
    """
    predictor = TilePredictor(model, device, precision)
    loss_sum, pixels, inter, union = 0.0, 0, 0, 0
    for image, label, weight in arrays:
        height, width = label.shape
        layout = tile_layout(model, VAL_TILE, VAL_CHUNK, height, width)
        for _, region in ChunkGrid(height, width, VAL_CHUNK):
            probs = predict_region(predictor, image, layout, region, batch_size, tta=False)
            target = np.asarray(label[region.slices]).astype(np.intp)
            p_target = np.take_along_axis(probs, target[None], axis=0)[0]
            w = np.asarray(weight[region.slices], dtype=np.float64)
            loss_sum += float(-(w * np.log(np.maximum(p_target, np.finfo(np.float32).tiny))).sum())
            pixels += target.size
            pred, foreground = argmax_classes(probs) > 0, target > 0
            inter += int(np.count_nonzero(pred & foreground))
            union += int(np.count_nonzero(pred | foreground))
    return loss_sum / pixels, (inter / union if union else 1.0)
