"""Benchmark: what store integrity costs (chunk checksums on write, the chunk check on read).

Every array a stage writes carries a CRC32C per chunk and the next stage checks that every chunk
is present and decodes (``unetflow.store.verify_store``). This measures, on the default config's
sizes, each stage run as the workflow runs it (``python -m unetflow ...`` in a fresh process,
wall time):

  * write side: computing CRC32C over every stored chunk's bytes (what the codec adds to a
    write), against the ingest stage that writes the store;
  * read side: ``verify_store`` timed alone in a fresh process (so zarr's start-up costs count
    against it, a pessimistic figure), against the stage that pays it: weights for the dataset
    store, predict (the default config's U-Net, depth 3, base 16, seeded weights, CPU) for the
    slide store. Training, which verifies the same dataset store, runs far longer than weights.

The ratio column is the integrity cost / that stage's time; the issue's bound is 5 %.

    .venv/bin/python benchmarks/integrity.py                 # 8 x 256^2 images, a 2048^2 slide
    .venv/bin/python benchmarks/integrity.py --slide-size 4096
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import google_crc32c
import torch

from unetflow.model import UNet, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
VERIFY = """
import sys, time, zarr
from pathlib import Path
from unetflow.store import verify_store
path = Path(sys.argv[1])
start = time.perf_counter()
verify_store(zarr.open_group(str(path), mode="r"), path)
print(time.perf_counter() - start)
"""


def python(*args: str) -> tuple[float, str]:
    """Wall time and stdout of ``python ARGS`` in a fresh process, with this checkout's unetflow."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], check=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return time.perf_counter() - start, done.stdout


def stage(*args: str) -> float:
    """Wall time of one stage run as a rule runs it."""
    return python("-m", "unetflow", *args)[0]


def verify_seconds(path: Path) -> float:
    """Time of ``verify_store`` alone, measured inside a fresh process."""
    return float(python("-c", VERIFY, str(path))[1].strip().splitlines()[-1])


def checksum_seconds(path: Path) -> float:
    """CRC32C of every chunk file's bytes: the work the crc32c codec adds to writing them."""
    chunks = [chunk.read_bytes() for chunk in path.rglob("c/**/*") if chunk.is_file()]
    start = time.perf_counter()
    for data in chunks:
        google_crc32c.value(data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--slide-size", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=1024)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, slide = work / "data.zarr", work / "slide.zarr"
        dataset = {"synthetic": {"n_images": args.images, "size": args.image_size}}
        t_ingest = stage("ingest", "dataset", str(data), "--settings", json.dumps(dataset))
        rows.append(("dataset", "ingest (write)", t_ingest, "checksums", checksum_seconds(data)))
        t_weights = stage("weights", str(data), str(work / "weights.zarr"))
        rows.append(("dataset", "weights (read)", t_weights, "verify", verify_seconds(data)))
        entry = {"name": "slide", "format": "synthetic", "size": args.slide_size, "seed": 1, "chunk": args.chunk}
        t_ingest = stage("ingest", "slide", str(slide), "--settings", json.dumps({"slide": entry}))
        rows.append(("slide", "ingest (write)", t_ingest, "checksums", checksum_seconds(slide)))
        torch.manual_seed(0)
        save_checkpoint(work / "model.pt", UNet(in_channels=1, n_classes=2, depth=3, base_channels=16).eval())
        predict = json.dumps({"device": "cpu", "chunk": args.chunk})
        t_predict = stage("predict", str(work / "model.pt"), str(slide), str(work / "out"), "--settings", predict)
        rows.append(("slide", "predict (read)", t_predict, "verify", verify_seconds(slide)))
    print(f"{'store':<8} {'stage':<15} {'stage s':>8} {'integrity':<10} {'cost s':>7} {'ratio':>7}")
    for store, name, t_stage, what, cost in rows:
        print(f"{store:<8} {name:<15} {t_stage:>8.2f} {what:<10} {cost:>7.3f} {cost / t_stage:>7.2%}")


if __name__ == "__main__":
    main()
