"""Benchmark: the tune stage's grid search vs a naive search over the same grid.

Ours: ``unetflow.tune.search`` (objects formed once per threshold pair, each ``min_size`` applied
to them, scored by sparse matching only). Baseline, in the same run on the same images: every
candidate's objects formed from scratch and scored by ``evaluate_segmentation`` (every metric,
as evaluate computes them), the objective taken from its row. Images: seeded discs that touch,
their 3-class targets blurred and noised into probabilities (a DSB-like val split). Prints the
candidate count, both times, the ratio and whether both chose the same entry.

    .venv/bin/python benchmarks/tune.py                      # 8 images of 256², like the DSB val split
    .venv/bin/python benchmarks/tune.py --images 4 --size 512
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage

from unetflow.config import stage_settings
from unetflow.instances import InstanceRule
from unetflow.metrics import evaluate_segmentation
from unetflow.postprocess import tuned_objects
from unetflow.targets import TargetSettings, targets
from unetflow.objectives import IOU_THRESHOLDS
from unetflow.tune import candidates, min_sizes, search


def touching_discs(size: int, seed: int) -> np.ndarray:
    """Discs of radius 5-12 px packed so that many touch (ids 1..n)."""
    rng = np.random.default_rng(seed)
    centres, radii = [], []
    for _ in range(size * size // 150):
        c, r = rng.uniform(0, size, 2), rng.uniform(5, 12)
        if all(np.hypot(*(c - c2)) > 0.8 * (r + r2) for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    yy, xx = np.indices((size, size))
    depth = np.stack([r - np.hypot(yy - c[0], xx - c[1]) for c, r in zip(centres, radii)])
    return np.where(depth.max(axis=0) > 0, depth.argmax(axis=0) + 1, 0).astype(np.int32)


def noisy_probabilities(labels: np.ndarray, seed: int) -> np.ndarray:
    """The 3-class targets of ``labels``, blurred and noised, as (3, Y, X) softmax probabilities."""
    _, classes = targets(labels, TargetSettings())
    rng = np.random.default_rng(seed)
    logits = np.stack([ndimage.gaussian_filter((classes == k).astype(np.float32), 1.5) for k in range(3)]) * 4
    logits += rng.normal(0, 0.8, logits.shape)
    e = np.exp(logits - logits.max(axis=0))
    return (e / e.sum(axis=0)).astype(np.float32)


def naive(images, recipe, entries, sizes) -> list[float]:
    """Every candidate from scratch, scored with every metric (f1_mean taken from the row)."""
    scores = []
    for entry in entries:
        for size in sizes:
            total = 0.0
            for _, gt, probs in images:
                row = evaluate_segmentation(gt, tuned_objects(probs, recipe, {**entry, "min_size": size}), IOU_THRESHOLDS)
                total += np.mean([row[f"f1@{t:g}"] for t in IOU_THRESHOLDS])
            scores.append(total / len(images))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images = []
    for i in range(args.images):
        gt = touching_discs(args.size, args.seed + i)
        images.append((str(i), gt, noisy_probabilities(gt, args.seed + i)))
    settings = stage_settings("tune", json.dumps({}))
    areas = np.concatenate([np.bincount(gt.ravel())[1:] for _, gt, _ in images])
    object_size = {"median_area": float(np.median(areas[areas > 0]))}
    recipe = InstanceRule(**TargetSettings().instance_rule(gaps_drawn=True))
    entries, sizes = candidates(settings, 3, object_size), min_sizes(settings, object_size)

    start = time.perf_counter()
    rows = search(images, recipe, entries, sizes, "f1_mean")
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    baseline = naive(images, recipe, entries, sizes)
    naive_s = time.perf_counter() - start
    same = int(np.argmax([r["score"] for r in rows])) == int(np.argmax(baseline))
    agree = max(abs(r["score"] - b) for r, b in zip(rows, baseline))

    print(f"{args.images} images of {args.size}², 3-class, objective f1_mean, recipe {recipe.grow}/{recipe.expand}")
    print("| candidates | naive s | ours s | ratio | same choice | max score difference |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(rows)} | {naive_s:.2f} | {ours_s:.2f} | {naive_s / ours_s:.1f}x | {same} | {agree:.1e} |")


if __name__ == "__main__":
    main()
