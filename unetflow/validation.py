"""The validation scores of a model during training: weighted loss, foreground IoU and an object
score over whole validation images; one of them (``train.select``) picks ``best.pt``.

Predictions come from the predict stage's overlap-tile code (``unetflow.inference``, no dask, no
zarr output), so the score that picks ``best.pt`` is the score of the model as it will be used,
borders included. The object score forms objects with the model's own instance rule and scores
them with tune's objective (``unetflow.objectives``): foreground IoU barely notices a boundary that
is missing between two cells, and on the DSB 2018 subset it chose a checkpoint whose val objects
were not its best. Objects are formed at the best of a coarse grid of thresholds and ``min_size``
(tune's own search, ``SELECT_GRID``), because tune will move them: a checkpoint whose objects are
best at a foreground threshold of 0.3 is not worse than one whose are best at 0.5. The grid is
fixed here, not the ``tune`` section, so that editing tune never retrains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetflow.devices import Precision
from unetflow.inference import TilePredictor, argmax_classes, predict_region_at, zoomed_layout
from unetflow.instances import InstanceRule
from unetflow.model import UNet
from unetflow.objectives import SELECT_FG_IOU, maximised
from unetflow.tiling import ChunkGrid
from unetflow.tune import candidates, min_sizes, search

VAL_TILE = 256  # validation output tile edge: fewer, larger tiles than training uses
VAL_CHUNK = 1024  # the loss and IoU run region by region, so a large validation image never sits whole in memory


#: the tune settings of the grid an object score is maximised over at each validation: 3 x 3
#: seed/foreground thresholds (3 for a 2-class model or rand) x min_size 0, 0.1 and 0.2 x the
#: median training object area -- 27 candidates, under a second on a few val images
SELECT_GRID: dict[str, Any] = {
    "thresholds": [0.3, 0.5, 0.7],
    "min_size_fractions": [0.1, 0.2],
    "watershed": False,
    "h_fractions": [],
}


@dataclass(frozen=True)
class Selection:
    """Which validation score picks ``best.pt``: ``fg_iou`` or one of tune's objectives, whose
    objects come from ``rule`` (the model's instance rule) at the best of ``candidates`` x ``sizes``."""

    score: str
    rule: InstanceRule
    candidates: tuple[dict[str, Any], ...] = ()
    sizes: tuple[int, ...] = (0,)

    @classmethod
    def for_model(cls, score: str, recipe: dict[str, Any], n_classes: int) -> Selection:
        """The selection of ``train.select`` for a model with this training recipe."""
        rule = InstanceRule.from_recipe(recipe.get("instances"))
        if score == SELECT_FG_IOU:
            return cls(score, rule)
        grid = {**SELECT_GRID, "objective": score}
        object_size = recipe.get("object_size") or {}
        return cls(score, rule, tuple(candidates(grid, n_classes, object_size)), tuple(min_sizes(grid, object_size)))

    @property
    def needs_objects(self) -> bool:
        return self.score != SELECT_FG_IOU

    def object_score(self, images: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> float:
        """The objective averaged over (name, truth, probabilities) images at the best candidate."""
        values = [row["score"] for row in search(images, self.rule, self.candidates, self.sizes, self.score)]
        return float(max(values) if maximised(self.score) else min(values))

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
    zooms: Sequence[float] = (),
) -> ValidationScores:
    """Loss and foreground IoU pooled over the (image, target, weight) arrays, and, when the
    selection needs objects, its object score against ``truths`` (the val images' objects).

    ``zooms`` (one per image, ``train.rescale``) predicts each image at the size the model trains at,
    as ``predict.diameter`` will. Leaves ``model`` in eval mode (the predictor puts it there).
    """
    with_objects = selection is not None and selection.needs_objects
    if with_objects and len(truths) != len(arrays):
        raise ValueError(f"object scores need the objects of every validation image ({len(truths)} for {len(arrays)})")
    predictor = TilePredictor(model, device, precision)
    loss_sum, pixels, inter, union, predicted = 0.0, 0, 0, 0, []
    for index, (image, label, weight) in enumerate(arrays):
        height, width = label.shape
        zoom = float(zooms[index]) if zooms else 1.0
        layout = zoomed_layout(model, VAL_TILE, VAL_CHUNK, height, width, zoom)
        whole = np.empty((predictor.n_classes, height, width), np.float32) if with_objects else None
        for _, region in ChunkGrid(height, width, VAL_CHUNK):
            probs = predict_region_at(predictor, image, layout, region, batch_size, False, zoom)
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
            predicted.append((str(index), np.asarray(truths[index]), whole))
    return ValidationScores(
        loss=loss_sum / pixels,
        fg_iou=inter / union if union else 1.0,
        objects=selection.object_score(predicted) if with_objects and selection is not None else None,
    )
