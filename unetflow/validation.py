"""The validation scores of a model during training: weighted loss, foreground IoU and an object
score over whole validation images; one of them (``train.select``) picks ``best.pt``.

Predictions come from the predict stage's overlap-tile code (``unetflow.inference``, no dask, no
zarr output), so the score that picks ``best.pt`` is the score of the model as it will be used,
borders included. The object score forms objects with the model's own instance rule at the
default thresholds (tune later moves them) and scores them with tune's objective
(``unetflow.objectives``): foreground IoU barely notices a boundary that is missing between two
cells, and on the DSB 2018 subset it chose a checkpoint whose val objects were not its best.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetflow.devices import Precision
from unetflow.inference import TilePredictor, argmax_classes, predict_region, tile_layout
from unetflow.instances import InstanceRule
from unetflow.model import UNet
from unetflow.objectives import SELECT_FG_IOU, maximised, scores
from unetflow.tiling import ChunkGrid

VAL_TILE = 256  # validation output tile edge: fewer, larger tiles than training uses
VAL_CHUNK = 1024  # the loss and IoU run region by region, so a large validation image never sits whole in memory


@dataclass(frozen=True)
class Selection:
    """Which validation score picks ``best.pt``: ``fg_iou`` or one of tune's objectives, whose
    objects come from ``rule`` (the model's instance rule at the default thresholds)."""

    score: str
    rule: InstanceRule

    @property
    def needs_objects(self) -> bool:
        return self.score != SELECT_FG_IOU

    def better(self, score: float, than: float | None) -> bool:
        if than is None:
            return True
        return score > than if maximised(self.score) else score < than


@dataclass(frozen=True)
class ValidationScores:
    loss: float  # weighted cross-entropy per pixel
    fg_iou: float  # foreground (argmax != background) IoU pooled over the images
    objects: float | None  # the selection's object score averaged over the images (None: not asked)

    def selected(self, selection: Selection) -> float:
        return self.objects if selection.needs_objects else self.fg_iou  # type: ignore[return-value]


def validation_scores(
    model: UNet,
    device: torch.device,
    precision: Precision,
    arrays: Sequence[tuple[Any, Any, Any]],
    batch_size: int,
    truths: Sequence[np.ndarray] = (),
    selection: Selection | None = None,
) -> ValidationScores:
    """Loss and foreground IoU pooled over the (image, target, weight) arrays, and, when the
    selection needs objects, its object score against ``truths`` (the val images' objects).

    Leaves ``model`` in eval mode (the predictor puts it there).
    """
    with_objects = selection is not None and selection.needs_objects
    if with_objects and len(truths) != len(arrays):
        raise ValueError(f"object scores need the objects of every validation image ({len(truths)} for {len(arrays)})")
    predictor = TilePredictor(model, device, precision)
    loss_sum, pixels, inter, union, object_scores = 0.0, 0, 0, 0, []
    for index, (image, label, weight) in enumerate(arrays):
        height, width = label.shape
        layout = tile_layout(model, VAL_TILE, VAL_CHUNK, height, width)
        whole = np.empty((predictor.n_classes, height, width), np.float32) if with_objects else None
        for _, region in ChunkGrid(height, width, VAL_CHUNK):
            probs = predict_region(predictor, image, layout, region, batch_size, tta=False)
            if whole is not None:
                whole[(slice(None), *region.slices)] = probs
            target = np.asarray(label[region.slices]).astype(np.intp)
            p_target = np.take_along_axis(probs, target[None], axis=0)[0]
            w = np.asarray(weight[region.slices], dtype=np.float64)
            loss_sum += float(-(w * np.log(np.maximum(p_target, np.finfo(np.float32).tiny))).sum())
            pixels += target.size
            pred, foreground = argmax_classes(probs) > 0, target > 0
            inter += int(np.count_nonzero(pred & foreground))
            union += int(np.count_nonzero(pred | foreground))
        if whole is not None:
            assert selection is not None
            object_scores += scores(np.asarray(truths[index]), selection.rule.objects(whole), [0], selection.score)
    return ValidationScores(
        loss=loss_sum / pixels,
        fg_iou=inter / union if union else 1.0,
        objects=float(np.mean(object_scores)) if with_objects else None,
    )
