"""Benchmark: what store integrity costs (chunk checksums on write, the chunk check on read).

Every array a stage writes carries a CRC32C per chunk and the next stage checks that every chunk
is present and decodes (``unetflow.store.verify_store``). This measures, in one run on the
default config's sizes:

  * write side: computing CRC32C over every stored chunk's bytes (what the codec adds to a write),
    against the ingest stage that writes the store;
  * read side: ``verify_store`` (every chunk listed, read, checksummed and decoded), against the
    stage that pays it: weights for the dataset store, predict (the default config's U-Net,
    depth 3, base 16, seeded weights) for the slide store.

The ratio column is the integrity cost / that stage's time; the issue's bound is 5 %.

    .venv/bin/python benchmarks/integrity.py                 # default sizes (8 x 256^2 images, 2048^2 slide)
    .venv/bin/python benchmarks/integrity.py --slide-size 4096
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import google_crc32c
import torch
import zarr

from unetflow.cli import main as cli
from unetflow.config import stage_settings
from unetflow.ingest import ingest_dataset, ingest_slide
from unetflow.model import UNet, save_checkpoint
from unetflow.predict import PredictOptions, predict_image
from unetflow.store import verify_store


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def verify(path: Path) -> None:
    """The check the next stage's ``open_store`` runs; done here first, timed, the stage itself
    then finds the store verified (once per process) and its time excludes the check."""
    verify_store(zarr.open_group(str(path), mode="r"), path)


def checksum_all(path: Path) -> None:
    """CRC32C of every chunk file's bytes: the work the crc32c codec adds to writing them."""
    for chunk in path.rglob("c/**/*"):
        if chunk.is_file():
            google_crc32c.value(chunk.read_bytes())


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
        data, weights, slide = work / "data.zarr", work / "weights.zarr", work / "slide.zarr"
        settings = stage_settings("dataset", json.dumps({"synthetic": {"n_images": args.images, "size": args.image_size}}))
        t_ingest = timed(lambda: ingest_dataset(settings, data))
        t_verify = timed(lambda: verify(data))
        t_weights = timed(lambda: cli(["weights", str(data), str(weights)]))
        rows.append(("dataset", "ingest (write)", t_ingest, "checksums", timed(lambda: checksum_all(data))))
        rows.append(("dataset", "weights (read)", t_weights, "verify", t_verify))
        entry = {"name": "slide", "format": "synthetic", "size": args.slide_size, "seed": 1, "chunk": args.chunk}
        t_ingest = timed(lambda: ingest_slide(entry, 1, "luminance", slide))
        torch.manual_seed(0)
        save_checkpoint(work / "model.pt", UNet(in_channels=1, n_classes=2, depth=3, base_channels=16).eval())
        options = PredictOptions.from_settings({"device": "cpu", "chunk": args.chunk})
        t_verify = timed(lambda: verify(slide))
        t_predict = timed(lambda: predict_image(work / "model.pt", slide, "slide", work / "out.ome.zarr", options))
        rows.append(("slide", "ingest (write)", t_ingest, "checksums", timed(lambda: checksum_all(slide))))
        rows.append(("slide", "predict (read)", t_predict, "verify", t_verify))
    print(f"{'store':<8} {'stage':<15} {'stage s':>8} {'integrity':<10} {'cost s':>7} {'ratio':>7}")
    for store, stage, t_stage, what, cost in rows:
        print(f"{store:<8} {stage:<15} {t_stage:>8.2f} {what:<10} {cost:>7.3f} {cost / t_stage:>7.2%}")


if __name__ == "__main__":
    main()
