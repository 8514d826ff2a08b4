"""Tests of the metrics: hand-made cases with answers worked out on paper (perfect, all wrong, one
split, one merge, empty prediction, empty ground truth, a DSB-style AP case, SEG), and agreement
with scikit-image and with independent numpy computations on random label images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from unetflow.metrics import (
    Overlap,
    UndefinedMetricWarning,
    evaluate_segmentation,
    match_objects,
    overlap,
    pixel_metrics,
    rand_and_vi,
    seg_score,
)

THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def boxes(shape, *specs) -> np.ndarray:
    """Label image with object ``k`` = the box ``specs[k-1]`` = (y0, y1, x0, x1)."""
    labels = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(specs, start=1):
        labels[y0:y1, x0:x1] = k
    return labels


def random_labels(rng: np.random.Generator, shape=(40, 50), n=12) -> np.ndarray:
    """Random overlapping discs (later ones cut earlier ones), ids scattered and not consecutive."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.indices(shape)
    for obj_id in rng.choice(np.arange(1, 1000), size=n, replace=False):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 9)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = obj_id
    return labels


def entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


# -- hand-made cases -----------------------------------------------------------------------------
def test_perfect_prediction_with_other_ids_scores_perfectly():
    gt = boxes((20, 30), (1, 5, 1, 9), (8, 15, 2, 6), (10, 19, 20, 29))
    pred = np.where(gt > 0, 50 - gt, 0)  # same objects, different ids
    row = evaluate_segmentation(gt, pred, THRESHOLDS)
    assert row["pixel_error"] == 0 and row["fg_iou"] == 1 and row["fg_dice"] == 1
    assert row["rand_error"] == pytest.approx(0) and row["vi_split"] == pytest.approx(0, abs=1e-12)
    assert row["vi_merge"] == pytest.approx(0, abs=1e-12)
    assert row["seg"] == 1 and row["mean_ap"] == 1
    assert all(row[f"{m}@{t:g}"] == 1 for m in ("precision", "recall", "f1", "ap", "pq") for t in THRESHOLDS)
    assert row["tp@0.95"] == 3 and row["fp@0.95"] == 0 and row["fn@0.95"] == 0


def test_all_wrong_prediction_scores_zero():
    gt = boxes((20, 30), (4, 10, 4, 12), (12, 18, 15, 25))
    pred = (gt == 0).astype(np.int32)  # the background, as one object
    row = evaluate_segmentation(gt, pred, [0.5])
    assert row["pixel_error"] == 1 and row["fg_iou"] == 0 and row["fg_dice"] == 0
    assert row["rand_error"] == 1 and row["rand_recall"] == 0
    assert row["seg"] == 0 and row["ap@0.5"] == 0 and row["f1@0.5"] == 0 and row["precision@0.5"] == 0
    assert (row["tp@0.5"], row["fp@0.5"], row["fn@0.5"]) == (0, 1, 2)


def test_one_split():
    gt = boxes((10, 12), (1, 5, 1, 9))  # 32 px
    pred = gt.copy()
    pred[1:5, 7:9] = 2  # 24 + 8 px
    row = evaluate_segmentation(gt, pred, [0.5, 0.75])
    # Rand pairs (ordered, n(n-1)): together in both 24*23 + 8*7 = 608, in truth 32*31 = 992.
    assert row["rand_recall"] == pytest.approx(608 / 992)
    assert row["rand_precision"] == pytest.approx(1.0)
    assert row["rand_error"] == pytest.approx(1 - 608 / (0.5 * 608 + 0.5 * 992))
    assert row["vi_split"] == pytest.approx(entropy_bits(np.array([0.75, 0.25])))
    assert row["vi_merge"] == pytest.approx(0, abs=1e-12)
    assert row["pixel_error"] == 0 and row["fg_iou"] == 1
    assert row["seg"] == pytest.approx(0.75)  # the 24-px part covers 75% of the object
    # IoU 0.75 matches at 0.5 but not at 0.75 (strictly greater, as DSB 2018)
    assert (row["tp@0.5"], row["fp@0.5"], row["fn@0.5"]) == (1, 1, 0)
    assert (row["tp@0.75"], row["fp@0.75"], row["fn@0.75"]) == (0, 2, 1)
    assert row["precision@0.5"] == 0.5 and row["recall@0.5"] == 1 and row["f1@0.5"] == pytest.approx(2 / 3)
    assert row["ap@0.5"] == 0.5 and row["pq@0.5"] == pytest.approx(0.75 / 1.5)
    assert row["mean_ap"] == pytest.approx(0.25)


def test_one_merge():
    gt = boxes((10, 12), (1, 5, 1, 5), (1, 5, 5, 9))  # two touching 16-px objects
    pred = (gt > 0).astype(np.int32)
    row = evaluate_segmentation(gt, pred, [0.45, 0.5])
    assert row["rand_precision"] == pytest.approx(2 * 16 * 15 / (32 * 31))
    assert row["rand_recall"] == pytest.approx(1.0)
    assert row["vi_merge"] == pytest.approx(1.0) and row["vi_split"] == pytest.approx(0, abs=1e-12)
    assert row["seg"] == pytest.approx(0.5)  # each object fully covered, Jaccard 16/32
    assert (row["tp@0.45"], row["fp@0.45"], row["fn@0.45"]) == (1, 0, 1)  # one-to-one
    assert (row["tp@0.5"], row["fp@0.5"], row["fn@0.5"]) == (0, 1, 2)


def test_empty_prediction():
    gt = boxes((10, 12), (1, 5, 1, 9))
    row = evaluate_segmentation(gt, np.zeros_like(gt), [0.5])
    assert row["pixel_error"] == pytest.approx(32 / 120) and row["fg_iou"] == 0 and row["fg_dice"] == 0
    assert row["rand_error"] == 1 and row["rand_recall"] == 0
    assert row["vi_split"] == pytest.approx(math.log2(32))  # 32 single-pixel segments
    assert row["seg"] == 0 and row["recall@0.5"] == 0 and row["f1@0.5"] == 0 and row["ap@0.5"] == 0
    assert row["precision@0.5"] == 1  # 0/0: no predictions, no false positives
    assert row["n_pred"] == 0 and row["n_gt"] == 1


def test_empty_ground_truth():
    pred = boxes((10, 12), (1, 5, 1, 9))
    row = evaluate_segmentation(np.zeros_like(pred), pred, [0.5])
    assert row["pixel_error"] == pytest.approx(32 / 120) and row["fg_iou"] == 0
    assert row["precision@0.5"] == 0 and row["recall@0.5"] == 1 and row["ap@0.5"] == 0
    # foreground-restricted scores and SEG have nothing to score: undefined, never "perfect"
    for key in ("rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge", "seg"):
        assert math.isnan(row[key]), key


def test_undefined_scores_warn():
    empty = np.zeros((8, 8), np.int32)
    with pytest.warns(UndefinedMetricWarning) as caught:
        row = evaluate_segmentation(empty, empty, [0.5])
    assert {"Rand error and VI", "SEG"} == {str(w.message).split(": undefined")[0] for w in caught}
    assert math.isnan(row["rand_error"]) and math.isnan(row["seg"])


def test_both_empty_is_perfect():
    empty = np.zeros((8, 8), np.int32)
    row = evaluate_segmentation(empty, empty, [0.5])
    assert row["pixel_error"] == 0 and row["fg_iou"] == 1 and row["f1@0.5"] == 1 and row["mean_ap"] == 1


def test_average_precision_and_seg_by_hand():
    # A exact (IoU 1); B shifted 2 px (inter 80, union 120: IoU 2/3); C missed; D false positive.
    gt = boxes((20, 50), (0, 10, 0, 10), (0, 10, 20, 30), (14, 18, 0, 4))
    pred = boxes((20, 50), (0, 10, 0, 10), (0, 10, 22, 32), (14, 18, 40, 44))
    row = evaluate_segmentation(gt, pred, THRESHOLDS)
    for t in THRESHOLDS:
        tp, fp, fn = (2, 1, 1) if t < 2 / 3 else (1, 2, 2)
        assert (row[f"tp@{t:g}"], row[f"fp@{t:g}"], row[f"fn@{t:g}"]) == (tp, fp, fn)
        assert row[f"ap@{t:g}"] == pytest.approx(tp / (tp + fp + fn))
    assert row["mean_ap"] == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)
    assert row["pq@0.5"] == pytest.approx((1 + 2 / 3) / (2 + 0.5 + 0.5))
    assert row["seg"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_seg_needs_more_than_half_coverage():
    gt = boxes((6, 10), (0, 4, 0, 8))
    half = boxes((6, 10), (0, 4, 0, 4))  # exactly 50% of the object
    more = boxes((6, 10), (0, 4, 0, 5))
    assert seg_score(overlap(gt, half)) == 0
    assert seg_score(overlap(gt, more)) == pytest.approx(20 / 32)


def test_matching_maximises_the_number_of_matches():
    # Greedy by IoU would pair g0-p0 (0.45) and leave g1 unmatched; the optimum pairs g0-p1, g1-p0.
    ov = Overlap(
        gt_sizes=np.array([10, 10]),
        pred_sizes=np.array([10, 10]),
        gt_index=np.array([0, 1, 0]),
        pred_index=np.array([0, 0, 1]),
        intersection=np.array([6, 5, 4]),
        iou=np.array([0.45, 0.40, 0.35]),
    )
    result = match_objects(ov, [0.3, 0.38, 0.5])
    assert result["tp"].tolist() == [2, 1, 0]
    assert result["pq"][0] == pytest.approx((0.40 + 0.35) / 2)
    assert result["pq"][1] == pytest.approx(0.45 / (1 + 0.5 + 0.5))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        evaluate_segmentation(np.zeros((4, 4), int), np.zeros((4, 5), int), [0.5])


# -- agreement with scikit-image and with independent computations -------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_iou_from_sparse_table_matches_per_pair_masks(seed):
    rng = np.random.default_rng(seed)
    gt, pred = random_labels(rng), random_labels(rng)
    ov = overlap(gt, pred)
    gt_ids, pred_ids = np.unique(gt[gt > 0]), np.unique(pred[pred > 0])
    expected = {}
    for i, g in enumerate(gt_ids):
        for j, p in enumerate(pred_ids):
            inter = np.count_nonzero((gt == g) & (pred == p))
            if inter:
                expected[(i, j)] = inter / np.count_nonzero((gt == g) | (pred == p))
    got = {(int(i), int(j)): v for i, j, v in zip(ov.gt_index, ov.pred_index, ov.iou)}
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v) for k, v in expected.items())
    assert ov.gt_sizes.tolist() == [np.count_nonzero(gt == g) for g in gt_ids]


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_numpy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((30, 40)) > 0.6, rng.random((30, 40)) > 0.5
    fa, fb = a.astype(float), b.astype(float)
    got = pixel_metrics(a, b)
    assert got["fg_iou"] == pytest.approx(np.minimum(fa, fb).sum() / np.maximum(fa, fb).sum())
    assert got["fg_dice"] == pytest.approx(2 * (fa * fb).sum() / (fa.sum() + fb.sum()))
    assert got["pixel_error"] == pytest.approx(np.abs(fa - fb).mean())


@pytest.mark.parametrize("seed", range(3))
def test_rand_and_vi_equal_scikit_image_when_no_true_pixel_is_missed(seed):
    rng = np.random.default_rng(seed)
    gt = random_labels(rng)
    pred = random_labels(rng, n=8)
    pred = np.where(gt > 0, np.where(pred > 0, pred, 2000), pred)  # no true foreground left as 0
    ours = rand_and_vi(gt, pred)
    error, first, second = adapted_rand_error(gt, pred)
    assert ours["rand_error"] == pytest.approx(error)
    # scikit-image's first value is the split score (its docstring calls it precision, #6485)
    assert ours["rand_recall"] == pytest.approx(first) and ours["rand_precision"] == pytest.approx(second)
    split, merge = variation_of_information(gt, pred, ignore_labels=[0])
    assert ours["vi_split"] == pytest.approx(split) and ours["vi_merge"] == pytest.approx(merge)


@pytest.mark.parametrize("seed", range(3))
def test_foreground_restricted_rand_and_vi_match_fiji_formulas(seed):
    """Independent dense computation of Fiji's foreground-restricted scores (ISBI 2012): pair
    counts skip the predicted-background column; its pixels add singleton entropy."""
    rng = np.random.default_rng(seed)
    gt, pred = random_labels(rng), random_labels(rng, n=8)
    assert (gt == 0).any() and (pred == 0).any()  # index 0 below is the background
    _, g = np.unique(gt, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    joint = np.zeros((g.max() + 1, p.max() + 1))
    np.add.at(joint, (g.ravel(), p.ravel()), 1)
    joint = joint[1:]  # drop true background (gt has background: label 0 is index 0)
    n = joint.sum()
    rows, cols, cells = joint.sum(1), joint[:, 1:].sum(0), joint[:, 1:]
    together_both = (cells * (cells - 1)).sum()
    recall = together_both / (rows * (rows - 1)).sum()
    precision = together_both / (cols * (cols - 1)).sum()
    ours = rand_and_vi(gt, pred)
    assert ours["rand_recall"] == pytest.approx(recall)
    assert ours["rand_precision"] == pytest.approx(precision)
    assert ours["rand_error"] == pytest.approx(1 - 2 * precision * recall / (precision + recall))
    singles = joint[:, 0].sum() / n * math.log2(n)
    h_gt = entropy_bits(rows / n)
    h_pred = entropy_bits(cols / n) + singles
    h_joint = entropy_bits(cells.ravel() / n) + singles
    assert ours["vi_split"] == pytest.approx(h_joint - h_gt)
    assert ours["vi_merge"] == pytest.approx(h_joint - h_pred)
