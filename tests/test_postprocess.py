"""Tests of instance post-processing: connected components, watershed on distance and on
probability (splits touching objects, never drops or grows the foreground), min-size removal."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetflow.metrics import evaluate_segmentation
from unetflow.io.labels import connected_instances as connected_components
from unetflow.instances import remove_small
from unetflow.postprocess import watershed


def two_touching_discs():
    """Two radius-10 discs 16 px apart (a 12-px neck) as a probability map, and the true
    objects split on the line between the centres."""
    yy, xx = np.mgrid[:40, :60]
    union = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 100) | ((yy - 20) ** 2 + (xx - 36) ** 2 <= 100)
    gt = np.where(union, np.where(xx < 28, 1, 2), 0).astype(np.int32)
    probability = np.where(union, 0.95, 0.05).astype(np.float32)
    return probability, gt, xx


def test_connected_components_are_4_connected():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    mask[2:4, 2:4] = True  # touches the first square only at a corner
    labels = connected_components(mask)
    assert labels.dtype == np.int32 and labels.max() == 2


def test_watershed_on_distance_splits_touching_discs():
    probability, gt, _ = two_touching_discs()
    assert connected_components(probability > 0.5).max() == 1  # connected components merge them
    labels = watershed(probability, source="distance")
    assert labels.max() == 2
    row = evaluate_segmentation(gt, labels, [0.9])
    assert row["tp@0.9"] == 2 and row["fp@0.9"] == 0


def test_watershed_on_probability_splits_at_the_dip():
    probability, gt, xx = two_touching_discs()
    probability[(probability > 0.5) & (xx == 28)] = 0.6  # a faint boundary, still foreground
    labels = watershed(probability, source="probability", h_probability=0.1)
    assert connected_components(probability > 0.5).max() == 1
    assert labels.max() == 2
    assert evaluate_segmentation(gt, labels, [0.9])["tp@0.9"] == 2


def test_watershed_with_a_high_h_does_not_split():
    probability, _, _ = two_touching_discs()
    assert watershed(probability, h_distance=50.0).max() == 1


def test_watershed_keeps_exactly_the_foreground_and_only_splits():
    rng = np.random.default_rng(0)
    probability = ndimage.gaussian_filter(rng.random((80, 80)), 3)
    probability = (probability - probability.min()) / np.ptp(probability)
    mask = probability > 0.5
    components = connected_components(mask)
    for source in ("distance", "probability"):
        labels = watershed(probability, source=source)
        assert np.array_equal(labels > 0, mask)  # tiny or flat regions are seeded as a whole
        # every watershed object lies inside one connected component
        pairs = np.unique(np.stack([labels[mask], components[mask]]), axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1]
        assert np.unique(labels[mask]).tolist() == list(range(1, labels.max() + 1))


def test_remove_small_drops_and_renumbers():
    labels = np.zeros((10, 10), np.int32)
    labels[0:3, 0:3] = 7  # 9 px
    labels[5, 5] = 3  # 1 px
    labels[6:8, 6:9] = 12  # 6 px
    out = remove_small(labels, 6)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert np.count_nonzero(out) == 15 and out[5, 5] == 0
    assert np.array_equal(remove_small(labels, 0) > 0, labels > 0)


def test_min_size_applies_to_both_methods():
    probability = np.zeros((12, 12), np.float32)
    probability[1:5, 1:5] = 0.9
    probability[9, 9] = 0.9
    for labels in (connected_components(probability > 0.5), watershed(probability)):
        assert labels.max() == 2
        assert remove_small(labels, 2).max() == 1


def test_unknown_source_is_refused():
    probability = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="distance"):
        watershed(probability, source="gradient")
