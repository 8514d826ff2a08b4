"""Segmentation metrics: pixel, foreground-overlap, clustering (Rand, VI) and object matching.

Every function compares a ground-truth label image with a predicted one: integer (Y, X) arrays,
0 = background, every positive id one object (ids need not be consecutive).

Conventions, fixed here so every number in ``per_image.csv`` means the same thing:

* **Undefined is NaN.** Scores restricted to the true foreground (Rand, VI) and SEG (a mean
  over true objects) have nothing to measure when the ground truth is all background; they are
  NaN with an :class:`UndefinedMetricWarning`, never a perfect score, and summaries skip them.
* **0/0 is 1.** A ratio whose denominator is zero means there was nothing to get wrong (no true
  objects and none predicted, no predictions so no false positives, ...), so it scores as
  perfect. An empty prediction of a non-empty image still scores recall, F1 and AP 0.
* **Foreground restriction** (ISBI 2012; Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142,
  and Fiji's ``RandError`` / ``VariationOfInformation``): pixels that are background in the
  ground truth are ignored, and true-foreground pixels the prediction calls background count
  as singletons, each its own segment. A thick predicted boundary then costs split score but
  can never fake a merge, which is what a membrane-thickness-independent score needs.
* **Matching** (Kaggle DSB 2018): a predicted and a true object match when their IoU is
  *strictly* greater than the threshold; objects are paired one-to-one by a Hungarian
  assignment that maximises the number of matches (ties broken by total IoU). Above 0.5
  every object has at most one candidate, so the assignment only matters for lower thresholds.

The IoU of every overlapping object pair comes from one sparse contingency table (pixel counts
per (true id, predicted id) pair), so the cost is one pass over the pixels plus work
proportional to the number of overlapping pairs, never objects x objects masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from skimage.metrics import adapted_rand_error, contingency_table, variation_of_information
from skimage.segmentation import relabel_sequential

MATCH_KEYS = ("tp", "fp", "fn", "precision", "recall", "f1", "ap", "pq")
FOREGROUND_KEYS = ("rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge")


class UndefinedMetricWarning(UserWarning):
    """A metric has nothing to measure (e.g. no true foreground) and is reported as NaN."""


def _undefined(metric: str, why: str) -> float:
    """NaN for ``metric``, with a warning saying why (a silent NaN would look like a bug)."""
    warnings.warn(f"{metric}: undefined ({why}); reported as NaN", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


def _ratio(num: Any, den: Any) -> Any:
    """num / den elementwise, 1.0 where den == 0 (see the module's 0/0 convention)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.divide(num, den, out=np.ones(np.broadcast(num, den).shape), where=den > 0)
    return float(out) if out.ndim == 0 else out


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")


def pixel_metrics(gt_fg: np.ndarray, pred_fg: np.ndarray) -> dict[str, float]:
    """Pixel error (fraction of misclassified pixels), foreground IoU and Dice of two masks."""
    gt_fg = np.asarray(gt_fg, dtype=bool)
    pred_fg = np.asarray(pred_fg, dtype=bool)
    _check_pair(gt_fg, pred_fg)
    inter = np.count_nonzero(gt_fg & pred_fg)
    n_gt, n_pred = np.count_nonzero(gt_fg), np.count_nonzero(pred_fg)
    return {
        "pixel_error": float(np.count_nonzero(gt_fg != pred_fg) / max(gt_fg.size, 1)),
        "fg_iou": _ratio(inter, n_gt + n_pred - inter),
        "fg_dice": _ratio(2 * inter, n_gt + n_pred),
    }


@dataclass(frozen=True)
class Overlap:
    """Pixel overlap of the objects of two label images.

    ``gt_sizes[i]`` / ``pred_sizes[j]`` are the pixel counts of the i-th true and j-th predicted
    object (0-based, in order of increasing id); ``gt_index``, ``pred_index``, ``intersection``
    and ``iou`` list every pair that shares at least one pixel.
    """

    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray

    @property
    def n_gt(self) -> int:
        return int(self.gt_sizes.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_sizes.size)


def overlap(gt: np.ndarray, pred: np.ndarray) -> Overlap:
    """Sizes and pairwise IoU of the objects of ``gt`` and ``pred`` from a sparse contingency table."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_pair(gt, pred)
    g = relabel_sequential(gt)[0].ravel()
    p = relabel_sequential(pred)[0].ravel()
    shape = (int(g.max(initial=0)) + 1, int(p.max(initial=0)) + 1)
    table = sparse.coo_array((np.ones(g.size, dtype=np.int64), (g, p)), shape=shape).tocsr()
    gt_sizes = np.asarray(table.sum(axis=1)).ravel()[1:]
    pred_sizes = np.asarray(table.sum(axis=0)).ravel()[1:]
    pairs = table[1:, 1:].tocoo()
    gi, pj, inter = pairs.row, pairs.col, pairs.data.astype(np.int64)
    union = gt_sizes[gi] + pred_sizes[pj] - inter
    return Overlap(gt_sizes, pred_sizes, gi, pj, inter, inter / union)


def _matched_iou(gi: np.ndarray, pj: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """IoU of the pairs kept by a maximum one-to-one matching of the candidate pairs given.

    The Hungarian assignment maximises the number of matches first (each candidate scores 1)
    and total IoU second (a bonus below 1/(2k) per pair, k = the most pairs possible, so all
    bonuses together never outweigh one extra match).
    """
    if gi.size == 0:
        return iou
    rows, r = np.unique(gi, return_inverse=True)
    cols, c = np.unique(pj, return_inverse=True)
    if rows.size == gi.size and cols.size == pj.size:
        return iou  # already one-to-one: every object has at most one candidate
    k = min(rows.size, cols.size)
    score = np.zeros((rows.size, cols.size))
    score[r, c] = 1.0 + iou / (2.0 * k)
    best = np.zeros_like(score)
    best[r, c] = iou
    ri, ci = linear_sum_assignment(score, maximize=True)
    keep = score[ri, ci] > 0
    return best[ri[keep], ci[keep]]


def count_scores(tp: Any, fp: Any, fn: Any) -> dict[str, Any]:
    """Precision TP/(TP+FP), recall TP/(TP+FN), F1 and DSB 2018 AP TP/(TP+FP+FN) from counts
    (scalars or arrays, e.g. one per threshold or pooled over images)."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "ap": _ratio(tp, tp + fp + fn),
    }


def match_objects(ov: Overlap, thresholds: Sequence[float]) -> dict[str, np.ndarray]:
    """Object-level scores at each IoU threshold: arrays (one value per threshold) of TP, FP,
    FN, the :func:`count_scores` and panoptic quality (sum of matched IoU) / (TP + FP/2 + FN/2)
    (Kirillov et al. 2019)."""
    tp, iou_sum = np.zeros(len(thresholds), dtype=np.int64), np.zeros(len(thresholds))
    for k, t in enumerate(thresholds):
        valid = ov.iou > t
        matched = _matched_iou(ov.gt_index[valid], ov.pred_index[valid], ov.iou[valid])
        tp[k], iou_sum[k] = matched.size, matched.sum()
    fp, fn = ov.n_pred - tp, ov.n_gt - tp
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        **{key: np.atleast_1d(value) for key, value in count_scores(tp, fp, fn).items()},
        "pq": np.atleast_1d(_ratio(iou_sum, tp + 0.5 * fp + 0.5 * fn)),
    }


def seg_score(ov: Overlap) -> float:
    """Cell Tracking Challenge SEG: mean over true objects of the Jaccard index with the one
    predicted object covering more than half of it (0 when none does); NaN without true objects."""
    if not ov.n_gt:
        return _undefined("SEG", "the ground truth has no objects")
    covers = ov.intersection > 0.5 * ov.gt_sizes[ov.gt_index]
    jaccard = np.zeros(ov.n_gt)
    jaccard[ov.gt_index[covers]] = ov.iou[covers]
    return float(jaccard.mean())


def _background_as_singletons(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``pred`` with each true-foreground pixel it calls background given its own new id."""
    out = pred.astype(np.int64, copy=True)
    missed = (gt > 0) & (pred == 0)
    start = int(out.max(initial=0)) + 1
    out[missed] = np.arange(start, start + np.count_nonzero(missed))
    return out


def rand_and_vi(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Foreground-restricted adapted Rand error and variation of information (scikit-image).

    ``rand_precision`` is the Rand merge score (pairs of pixels together in both / together in
    the prediction: 1 = no false merges) and ``rand_recall`` the split score (... / together in
    the truth: 1 = no false splits); ``rand_error`` = 1 - their harmonic mean. scikit-image's
    ``adapted_rand_error`` returns these two in the opposite order to its own docstring
    (scikit-image issue #6485: its "precision" divides by the true segment sizes), so they are
    taken by formula, not by name. ``vi_split`` = H(pred | gt) and ``vi_merge`` = H(gt | pred),
    in bits. All are NaN when the ground truth has no foreground.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_pair(gt, pred)
    if not np.any(gt > 0):
        nan = _undefined("Rand error and VI", "the ground truth has no foreground pixels")
        return dict.fromkeys(FOREGROUND_KEYS, nan)
    test = _background_as_singletons(gt, pred)
    table = contingency_table(gt, test, ignore_labels=[0], sparse_type="array")
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        error, split_score, merge_score = adapted_rand_error(table=table)
    # skimage's VI cannot take a precomputed table without the images (it checks their shapes).
    vi_split, vi_merge = variation_of_information(gt, test, ignore_labels=[0])
    # NaN only from 0/0: no pixel pairs in one object at all (every object a single pixel).
    return {
        "rand_error": 0.0 if np.isnan(error) else float(error),
        "rand_precision": 1.0 if np.isnan(merge_score) else float(merge_score),
        "rand_recall": 1.0 if np.isnan(split_score) else float(split_score),
        "vi_split": max(0.0, float(vi_split)),  # entropies; clip float round-off below 0
        "vi_merge": max(0.0, float(vi_merge)),
    }


def threshold_key(metric: str, threshold: float) -> str:
    """Column name of a per-threshold value, e.g. ``f1@0.5``."""
    return f"{metric}@{threshold:g}"


def evaluate_segmentation(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """Every metric of one image as a flat row: scalars plus ``<metric>@<threshold>`` columns.

    Pixel metrics use the foreground of the label images themselves (label > 0), so they score
    the same final segmentation as the object metrics. ``mean_ap`` is the DSB 2018 image score
    (AP averaged over the thresholds).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_pair(gt, pred)
    ov = overlap(gt, pred)
    matches = match_objects(ov, thresholds)
    row: dict[str, float] = {"n_gt": ov.n_gt, "n_pred": ov.n_pred}
    row.update(pixel_metrics(gt > 0, pred > 0))
    row.update(rand_and_vi(gt, pred))
    row["seg"] = seg_score(ov)
    row["mean_ap"] = float(matches["ap"].mean())
    for key in MATCH_KEYS:
        for t, value in zip(thresholds, matches[key]):
            row[threshold_key(key, t)] = value.item()
    return row
