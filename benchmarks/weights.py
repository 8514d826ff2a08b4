"""Benchmark: truncated per-object border term vs the naive one-EDT-per-object baseline.

Baseline: ``unetflow.weights.naive_border_term`` (one full-image Euclidean distance transform per
object, the reading of the paper that public code uses), measured in the same run on the same
label images. Labels are seeded Voronoi cells separated by thin gaps, like touching cells with
membranes. Prints one row per object count: objects, image size, naive s, ours s, ratio, the
largest absolute difference of the two border terms over all pixels (truncation bounds it by
eps) and over the pixels where the naive term exceeds eps (where the results must agree).

    .venv/bin/python benchmarks/weights.py                       # 1024^2, 100 and 500 objects
    .venv/bin/python benchmarks/weights.py --size 2048 --objects 2000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

from unetflow.weights import WeightSettings, border_term, naive_border_term


def voronoi_cells(size: int, n_objects: int, gap: float, seed: int) -> np.ndarray:
    """Seeded Voronoi cells (ids 1..n) with background gaps of about ``gap`` px between them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, size, (n_objects, 2))
    pixels = np.indices((size, size)).reshape(2, -1).T
    dist, nearest = cKDTree(centres).query(pixels, k=2)
    labels = (nearest[:, 0] + 1).astype(np.int32)
    labels[dist[:, 1] - dist[:, 0] < gap] = 0  # pixels about equidistant to two centres: membrane
    return labels.reshape(size, size)


def best_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Fastest of ``repeats`` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image edge in pixels")
    parser.add_argument("--objects", type=int, nargs="+", default=[100, 500], help="object counts, one row each")
    parser.add_argument("--w0", type=float, default=10.0)
    parser.add_argument("--sigma", type=float, default=5.0)
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--gap", type=float, default=2.0, help="membrane width between cells (px)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours; the best counts (naive runs once)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = WeightSettings(w0=args.w0, sigma=args.sigma, eps=args.eps, border="everywhere")
    print(f"border term, w0={args.w0} sigma={args.sigma} eps={args.eps} (T = {settings.truncation:.1f} px)")
    header = (
        f"{'objects':>8} {'size':>11} {'naive s':>9} {'ours s':>8} {'ratio':>7} {'max abs diff':>13}"
        f" {'diff > eps':>11}"
    )
    print(header)
    print("-" * len(header))
    for n_objects in args.objects:
        labels = voronoi_cells(args.size, n_objects, args.gap, args.seed)
        found = int(np.unique(labels[labels > 0]).size)
        naive_s, naive = best_time(lambda: naive_border_term(labels, args.w0, args.sigma), 1)
        ours_s, ours = best_time(lambda: border_term(labels, settings), args.repeats)
        diff = np.abs(ours - naive)
        relevant = naive > args.eps
        diff_relevant = float(diff[relevant].max()) if relevant.any() else 0.0
        size = f"{args.size}x{args.size}"
        print(
            f"{found:>8} {size:>11} {naive_s:>9.2f} {ours_s:>8.3f} {naive_s / ours_s:>6.1f}x"
            f" {float(diff.max()):>13.2e} {diff_relevant:>11.2e}"
        )


if __name__ == "__main__":
    main()
