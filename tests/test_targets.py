"""Training targets: gaps between touching objects, boundary classes, chunked == whole, and the
weights stage writing targets whose gaps carry the border weight."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from unetflow import cli
from unetflow.metrics import evaluate_segmentation
from unetflow.instances import grow_seeds
from unetflow.store import open_store, store_meta, write_dataset
from unetflow.targets import BOUNDARY, INTERIOR, TargetSettings, class_targets, separate_touching, targets
from unetflow.weights import WeightSettings, block_slices, target_block


def two_touching_squares() -> np.ndarray:
    labels = np.zeros((30, 40), np.int32)
    labels[5:25, 4:20] = 1
    labels[5:25, 20:36] = 2
    return labels


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_touching_squares_get_a_gap_of_the_given_width_and_stay_two_objects(gap: int) -> None:
    gapped = separate_touching(two_touching_squares(), gap)
    row = gapped[15]
    assert np.count_nonzero(row[4:36] == 0) == gap  # the gap, exactly gap pixels wide
    assert set(np.unique(gapped)) == {0, 1, 2}
    components, n = ndimage.label(gapped > 0)
    assert n == 2  # the foreground alone now separates them
    # nothing else changed: away from the contact the objects keep every pixel
    assert np.array_equal(gapped[:, :17] , two_touching_squares()[:, :17])


def test_gap_leaves_separate_and_diagonal_objects_alone_and_never_erases_an_object() -> None:
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1
    labels[6:10, 6:10] = 2  # touches object 1 only at a corner: already apart under 4-connectivity
    labels[12:18, 2:8] = 3  # alone
    labels[12:18, 8] = 4  # a one-pixel-wide object touching object 3
    gapped = separate_touching(labels, 2)
    assert np.array_equal(gapped[:11], labels[:11])
    assert np.array_equal(gapped == 3, labels == 3) is False  # object 3 gave up its touching column
    assert np.count_nonzero(gapped == 4) == 6  # object 4 would vanish entirely: kept whole
    assert separate_touching(labels, 0).tolist() == labels.tolist()


def test_boundary_targets_mark_a_band_inside_each_object_and_keep_every_object_seeded() -> None:
    labels = two_touching_squares()
    labels[27:29, 2:4] = 3  # a 2x2 object: no interior at boundary width 2
    gapped, classes = targets(labels, TargetSettings(mode="boundary", gap=2, boundary_width=2))
    assert classes.dtype == np.uint8 and set(np.unique(classes)) == {0, 1, 2}
    assert np.all(classes[gapped == 0] == 0)
    square = classes[5:25, 4:19]  # object 1 after its gap column
    assert np.all(square[:2] == BOUNDARY) and np.all(square[2:-2, 2:-2] == INTERIOR)
    assert np.all(classes[27:29, 2:4] == INTERIOR)  # too small for an interior: all seed
    binary = class_targets(gapped, TargetSettings(mode="binary"))
    assert np.array_equal(binary, (gapped > 0).astype(np.uint8))


def test_border_term_peaks_on_the_gap() -> None:
    labels = two_touching_squares()
    settings = WeightSettings(w0=10.0, sigma=5.0, eps=1e-6, border="background")
    classes, term = target_block(labels, settings, TargetSettings(mode="boundary", gap=2), slice(0, 30), slice(0, 40))
    gap_pixels = (classes == 0) & (labels > 0)
    assert gap_pixels.sum() == 2 * 20
    # each gap pixel is 1 px from one square and 2 px from the other: w0 exp(-(1 + 2)^2 / 2 sigma^2)
    np.testing.assert_allclose(term[gap_pixels], 10.0 * np.exp(-9.0 / 50.0), rtol=1e-6)
    assert term[classes > 0].max() == 0.0  # the paper's border term lives on background only
    assert term.max() == pytest.approx(term[gap_pixels].max())


def random_touching_labels(seed: int, shape=(90, 110), n=40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    yy, xx = np.indices(shape)
    for i in range(1, n + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 12)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    return labels


@pytest.mark.parametrize("mode", ["binary", "boundary"])
def test_targets_and_weights_by_block_equal_the_whole_image(mode: str) -> None:
    labels = random_touching_labels(1)
    settings = WeightSettings(w0=10.0, sigma=3.0, eps=1e-6, border="background")
    tsettings = TargetSettings(mode=mode, gap=3, boundary_width=2)
    whole_classes, whole_term = target_block(labels, settings, tsettings, slice(0, 90), slice(0, 110))
    classes, term = np.zeros_like(whole_classes), np.zeros_like(whole_term)
    for ys, xs in block_slices(labels.shape, (23, 31)):
        classes[ys, xs], term[ys, xs] = target_block(labels, settings, tsettings, ys, xs)
    np.testing.assert_array_equal(classes, whole_classes)
    np.testing.assert_array_equal(term, whole_term)
    assert np.array_equal(whole_classes > 0, targets(labels, tsettings)[0] > 0)


def touching_nuclei(seed: int, shape=(256, 256), n=400) -> np.ndarray:
    """DSB-like nuclei: discs of radius 5-12 px, packed so that many touch or overlap a little;
    where two overlap, each pixel goes to the disc whose edge is farther (a straight contact)."""
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    for _ in range(n):
        c, r = rng.uniform(0, shape), rng.uniform(5, 12)
        if all(np.hypot(*(c - c2)) > 0.8 * (r + r2) for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    yy, xx = np.indices(shape)
    depth = np.stack([r - np.hypot(yy - c[0], xx - c[1]) for c, r in zip(centres, radii)])
    return np.where(depth.max(axis=0) > 0, depth.argmax(axis=0) + 1, 0).astype(np.int32)


def test_perfect_boundary_targets_give_the_true_objects_back() -> None:
    """Perfect boundary targets fed back as the prediction: interior seeds grown and widened by
    the recipe's rule recover touching nuclei (F1 >= 0.99 at IoU 0.5, and at 0.75)."""
    labels = touching_nuclei(2)
    gapped, classes = targets(labels, TargetSettings())
    assert np.count_nonzero((labels > 0) & (gapped == 0)) > 0  # nuclei do touch here
    assert ndimage.label(labels > 0)[1] < len(np.unique(labels)) - 1 - 10  # >10 merged by plain components
    rule = TargetSettings().instance_rule(gaps_drawn=True)
    seeds, _ = ndimage.label(classes == INTERIOR)
    objects = grow_seeds(seeds, classes > 0, rule["grow"], rule["expand"])
    scores = evaluate_segmentation(labels, objects, [0.5, 0.75])
    assert scores["f1@0.5"] >= 0.99 and scores["f1@0.75"] >= 0.99


def test_grow_seeds_is_local_so_windows_give_the_whole_result() -> None:
    labels = random_touching_labels(3)
    foreground = labels > 0
    seeds = np.where(ndimage.binary_erosion(foreground, iterations=3), labels, 0)
    whole = grow_seeds(seeds, foreground, 5, expand=1)
    assert np.count_nonzero(whole) > np.count_nonzero(grow_seeds(seeds, foreground, 5))  # gaps were claimed
    y0, y1, x0, x1, h = 30, 60, 40, 80, 5 + 3  # the halo grow_chunk reads: grow + 3 expand
    window = grow_seeds(seeds[y0 - h : y1 + h, x0 - h : x1 + h], foreground[y0 - h : y1 + h, x0 - h : x1 + h], 5, 1)
    np.testing.assert_array_equal(window[h:-h, h:-h], whole[y0:y1, x0:x1])


def test_weights_cli_writes_boundary_targets_class_weights_and_object_size(tmp_path) -> None:
    labels = {name: random_touching_labels(seed) for seed, name in enumerate("abc")}
    images = {name: (lab > 0)[None].astype(np.float32) for name, lab in labels.items()}
    write_dataset(tmp_path / "data.zarr", images, labels, split={"train": ["a", "b"], "val": ["c"]}, chunk=64)
    out = tmp_path / "weights.zarr"
    png = tmp_path / "weights.png"
    assert cli.main(["weights", str(tmp_path / "data.zarr"), str(out), "--settings", json.dumps({}), "--preview", str(png)]) == 0
    group = open_store(out, "weights")
    meta = store_meta(group)
    assert meta["n_classes"] == 3 and meta["target"] == {"mode": "boundary", "gap": 2, "boundary_width": 1}
    assert meta["gap_pixels"] > 0 and meta["instances"] == {"grow": 4, "expand": 1}
    tsettings = TargetSettings()
    counts = np.zeros(3)
    for name in ("a", "b"):
        expected = targets(labels[name], tsettings)[1]
        np.testing.assert_array_equal(group["targets"][name][...], expected)
        counts += np.bincount(expected.ravel(), minlength=3)
    assert meta["class_counts"] == counts.astype(int).tolist()
    assert meta["class_weights"] == pytest.approx((counts.sum() / (3 * counts)).tolist())
    areas = np.concatenate([np.bincount(labels[n].ravel())[1:] for n in ("a", "b")])
    assert meta["object_size"]["median_area"] == pytest.approx(float(np.median(areas[areas > 0])))
    # the weight of a gap pixel: class weight of background plus the border term
    weights, classes = group["weights"]["a"][...], group["targets"]["a"][...]
    gap = (classes == 0) & (labels["a"] > 0)
    assert gap.any() and weights[gap].min() > meta["class_weights"][0] + 5.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
