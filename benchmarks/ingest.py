"""Benchmark: streaming a giant synthetic slide into zarr and ingesting it, memory bounded.

For each slide edge, one fresh subprocess generates the slide chunk by chunk into a raw zarr
array and ingests it (rechunking into the store, pixels as acquired), as `make run` does.
Prints wall time, throughput and the subprocess's peak RSS next to the baseline a naive
in-memory pipeline needs at the least: the whole float32 slide held once (size^2 x 4 bytes).
The ratio column is peak RSS / that baseline; the last line compares peak RSS of the largest
slide with the smallest (bounded memory means close to 1).

The same subprocess then times the slide's streamed percentiles (``streamed_percentiles``, what
``predict`` computes before its chunk tasks) against one plain pass that only reads and sums the
stored slide: "stats/read" about 2 or less means the two streamed passes run at disk speed. The
peak RSS covers these passes too.

    .venv/bin/python benchmarks/ingest.py                      # 4096 and 16384 (about 5 min on 2 cores)
    .venv/bin/python benchmarks/ingest.py --sizes 2048 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, resource, sys, time
from unetflow.ingest import ingest_slide
size, chunk, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
ingest_slide({"name": "giant", "format": "synthetic", "size": size, "seed": 1, "chunk": chunk, "path": None}, 1, "luminance", out)
seconds = time.perf_counter() - start
import dask.array as da, zarr
from unetflow.normalize import streamed_percentiles
slide = zarr.open_array(out + "/images/giant", mode="r")
start = time.perf_counter()
da.from_array(slide, chunks=(1, chunk, chunk)).astype("float64").sum().compute()
read = time.perf_counter() - start
start = time.perf_counter()
streamed_percentiles(slide, (1.0, 99.8), chunk=chunk)
stats = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "read": read, "stats": stats, "peak_rss_mb": peak}))
"""


def measure(size: int, chunk: int) -> dict[str, float]:
    """Generate + ingest one slide in a fresh interpreter; its own peak RSS and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(size), str(chunk), f"{tmp}/slide.zarr"],
            capture_output=True, text=True, check=True,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    print(
        f"{'edge':>7} {'MP':>7} {'seconds':>8} {'MP/s':>6} {'peak RSS MB':>12} {'in-memory MB':>13} {'ratio':>6}"
        f" {'read s':>7} {'stats s':>8} {'stats/read':>10}"
    )
    rows = []
    for size in args.sizes:
        row = measure(size, args.chunk)
        megapixels = size * size / 1e6
        in_memory = size * size * 4 / 2**20
        rows.append(row)
        print(
            f"{size:>7} {megapixels:>7.1f} {row['seconds']:>8.1f} {megapixels / row['seconds']:>6.2f} "
            f"{row['peak_rss_mb']:>12.0f} {in_memory:>13.0f} {row['peak_rss_mb'] / in_memory:>6.2f}"
            f" {row['read']:>7.1f} {row['stats']:>8.1f} {row['stats'] / row['read']:>10.2f}"
        )
    if len(rows) > 1:
        growth = (args.sizes[-1] / args.sizes[0]) ** 2
        print(
            f"peak RSS {args.sizes[-1]} / {args.sizes[0]}: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x "
            f"for {growth:.0f}x the pixels"
        )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
