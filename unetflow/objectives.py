"""The object scores that choose things on the validation split: the checkpoint kept as best.pt
(``unetflow.validation``) and the post-processing (``unetflow.tune``).

One definition for both, so the checkpoint is picked by the very score its post-processing is
then tuned for: a model is judged by its objects, not by how many pixels it gets right (a thin
missing boundary costs few pixels and merges two cells).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unetflow.instances import remove_small
from unetflow.metrics import adapted_rand, match_objects, overlap

IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())
#: objective -> (IoU thresholds it matches at, whether higher is better)
OBJECTIVES: dict[str, tuple[tuple[float, ...], bool]] = {
    "f1_mean": (IOU_THRESHOLDS, True),
    "ap": (IOU_THRESHOLDS, True),
    "f1_0.5": ((0.5,), True),
    "rand": ((), False),
}


SELECT_FG_IOU = "fg_iou"  # train.select's pixel-only choice beside the objectives


def higher_is_better(objective: str) -> bool:
    return OBJECTIVES[objective][1]


def maximised(select: str) -> bool:
    """Whether a higher ``train.select`` score is better (all but the Rand error)."""
    return True if select == SELECT_FG_IOU else higher_is_better(select)


def scores(gt: np.ndarray, pred: np.ndarray, sizes: Sequence[int], objective: str) -> list[float]:
    """One image's objective at each ``min_size`` of ``sizes``: mean F1 or DSB AP over the IoU
    thresholds, F1 at 0.5, or the foreground-restricted adapted Rand error (lower is better).

    Matching objectives count the object overlaps once and drop the small objects from them
    (``Overlap.without_small_predictions``), not from the image.
    """
    if objective == "rand":
        return [adapted_rand(gt, remove_small(pred, size))["rand_error"] for size in sizes]
    thresholds, _ = OBJECTIVES[objective]
    counted = overlap(gt, pred)
    key = "ap" if objective == "ap" else "f1"
    return [float(match_objects(counted.without_small_predictions(size), thresholds)[key].mean()) for size in sizes]
