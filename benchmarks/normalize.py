"""Benchmark: streamed whole-slide percentiles against one plain read of the slide, memory bounded.

For each slide edge, a fresh subprocess writes a zarr slide of 16-bit-valued float32 pixels
(1024^2 chunks), then times (a) the baseline: one pass that only reads and sums every chunk, and
(b) ``streamed_percentiles`` (min/max pass + histogram pass), the statistics ``predict`` computes
before its chunk tasks. The ratio is (b) / (a): about 2 means the statistics run at disk speed
(two passes). Peak RSS is the subprocess's, next to the whole slide's float32 size: bounded
memory means it stays well below that and nearly constant across edges.

    .venv/bin/python benchmarks/normalize.py                  # 4096 and 8192
    .venv/bin/python benchmarks/normalize.py --sizes 2048 16384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
import dask.array as da
import numpy as np
import zarr
from unetflow.normalize import streamed_percentiles
size, chunk, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
arr = zarr.create_array(path, shape=(1, size, size), chunks=(1, chunk, chunk), dtype="float32")
rng = np.random.default_rng(0)
for y in range(0, size, chunk):
    for x in range(0, size, chunk):
        h, w = min(chunk, size - y), min(chunk, size - x)
        arr[:, y : y + h, x : x + w] = rng.integers(0, 60000, (1, h, w)).astype(np.float32)
start = time.perf_counter()
da.from_array(arr, chunks=(1, chunk, chunk)).astype(np.float64).sum().compute()
read = time.perf_counter() - start
start = time.perf_counter()
streamed_percentiles(arr, (1.0, 99.8), chunk=chunk)
stats = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"read": read, "stats": stats, "peak_rss_mb": peak}))
"""


def measure(size: int, chunk: int) -> dict[str, float]:
    """Write one slide and time a plain read and the streamed percentiles, in a fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(size), str(chunk), f"{tmp}/slide.zarr"],
            capture_output=True, text=True, check=True,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    print(f"{'edge':>7} {'MP':>7} {'read s':>7} {'stats s':>8} {'ratio':>6} {'MP/s':>6} {'peak RSS MB':>12} {'slide MB':>9}")
    for size in args.sizes:
        row = measure(size, args.chunk)
        megapixels = size * size / 1e6
        print(
            f"{size:>7} {megapixels:>7.1f} {row['read']:>7.2f} {row['stats']:>8.2f} {row['stats'] / row['read']:>6.2f} "
            f"{megapixels / row['stats']:>6.1f} {row['peak_rss_mb']:>12.0f} {size * size * 4 / 2**20:>9.0f}"
        )


if __name__ == "__main__":
    main()
