"""Benchmark of the train stage: augmentation throughput and the data/compute split of a step.

1. Elastic deformation at the paper's settings (3x3 grid, sigma 10 px) of 572x572 tiles with
   their label (and, for ours, weight map): ``unetflow.augment`` (batched torch ops on the chosen
   device) against the ``elasticdeform`` package (scipy-style C code, one sample at a time on
   the CPU, cubic spline for the image and nearest for the label, mirror boundary). Ours is timed
   with the deformation alone (like for like) and with the full training augmentation.
2. Training steps/s on a synthetic dataset, split into data (sample windows from the store, copy
   to the device, augment) and compute (forward, weighted loss, backward, optimizer step), in
   each precision and memory layout: fp32 NCHW (the layout before ``precision`` existed, the
   baseline), fp32 channels_last (``precision: fp32`` on a CPU), bf16 autocast NCHW, and bf16
   channels_last (``precision: bf16``/``auto`` on a CPU with native bf16). The variants step in
   turn, one step each, so load from other processes on a shared machine hits them alike.

    python benchmarks/train.py --threads 2          # CPU defaults, a few minutes on 2 cores
    python benchmarks/train.py --device cuda --depth 5 --base-channels 64 --tile 388 --batch-size 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetflow.augment import Augmenter, AugmentSettings
from unetflow.cli import main as cli_main
from unetflow.config import stage_settings
from unetflow.devices import Precision, explicit_precisions, pick_device
from unetflow.model import UNet
from unetflow.store import write_dataset
from unetflow.synthetic import make_dataset
from unetflow.train import Trainer

PAPER_TILE = 572


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best of ``repeats`` timings after one warm-up call (the least disturbed by other load)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bench_augmentation(device: torch.device, batch: int, repeats: int) -> list[tuple[str, float]]:
    """Samples/s of elastic deformation of 572x572 tiles: ours (elastic only, full) vs elasticdeform."""
    rows = []
    geometry = UNet(depth=5, base_channels=1)
    out = geometry.output_size(PAPER_TILE)
    generator = torch.Generator(device=device).manual_seed(0)
    elastic_only = AugmentSettings(
        elastic=True, flip=False, rot90=False, rotate_degrees=0.0, shift=0.0, gamma=0.0, contrast=0.0, noise=0.0
    )
    for label, settings in (("elastic only", elastic_only), ("full training augmentation", AugmentSettings())):
        aug = Augmenter(settings, PAPER_TILE, out, generator)
        image = torch.randn(batch, 1, PAPER_TILE + 2 * aug.border, PAPER_TILE + 2 * aug.border, device=device)
        lab = torch.randint(0, 2, (batch, out + 2 * aug.border, out + 2 * aug.border), device=device)
        weight = torch.rand(lab.shape, device=device)
        seconds = _best_seconds(lambda: aug(image, lab, weight), repeats, device)
        rows.append((f"unetflow.augment, {label}, {device.type}, batch {batch}", batch / seconds))
    try:
        import elasticdeform
    except Exception as exc:  # the compiled extension can fail to import (e.g. a NumPy ABI mismatch)
        rows.append((f"elasticdeform unavailable: {type(exc).__name__}: {exc}".splitlines()[0], float("nan")))
        return rows
    rng = np.random.default_rng(0)
    image_np = rng.normal(size=(PAPER_TILE, PAPER_TILE)).astype(np.float32)
    label_np = rng.integers(0, 2, (PAPER_TILE, PAPER_TILE)).astype(np.float32)

    def baseline() -> None:
        for _ in range(batch):
            elasticdeform.deform_random_grid([image_np, label_np], sigma=10, points=3, order=[3, 0], mode="mirror")

    seconds = _best_seconds(baseline, repeats, torch.device("cpu"))
    rows.append((f"elasticdeform.deform_random_grid (image+label), cpu, {batch} samples", batch / seconds))
    return rows


def _dataset(root: Path, n_images: int, size: int) -> tuple[Path, Path]:
    """A synthetic dataset store and its weights store (written by the real weights stage)."""
    pairs = make_dataset(n_images, size, seed=0)
    names = [f"img{i:03d}" for i in range(n_images)]
    data = write_dataset(
        root / "data.zarr",
        {n: img[None] for n, (img, _) in zip(names, pairs)},
        {n: lab for n, (_, lab) in zip(names, pairs)},
        split={"train": names, "val": []},
    )
    weights = root / "weights.zarr"
    if cli_main(["weights", str(data), str(weights)]) != 0:
        raise SystemExit("the weights stage failed")
    return data, weights


def precision_variants(device: torch.device) -> list[tuple[str, Precision]]:
    """The precisions and layouts to compare; the first is the baseline (fp32, NCHW)."""
    variants = []
    for setting, precision in explicit_precisions(device):
        name = setting if precision.dtype is None else f"{setting} autocast"
        variants.append((f"{name} NCHW", dataclasses.replace(precision, channels_last=False)))
        if precision.channels_last:
            variants.append((f"{name} channels_last", precision))
    if len(variants) <= 2:
        print(f"(no bf16 rows: {device.type} has no native bf16)")
    return variants


def bench_training(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Mean data and compute seconds per training step after warm-up steps, per precision variant.

    Every variant is a ``Trainer`` with the same seed and data whose precision is then set as
    the variant says (``Precision`` is what ``train.precision`` resolves to).
    """
    with tempfile.TemporaryDirectory() as tmp:
        data, weights = _dataset(Path(tmp), args.images, args.image_size)
        model = stage_settings("model", json.dumps({"depth": args.depth, "base_channels": args.base_channels}))
        train = stage_settings(
            "train",
            json.dumps(
                {"device": device.type, "tile": args.tile, "batch_size": args.batch_size, "steps": 10**6}
            ),
        )
        runs = []
        for label, precision in precision_variants(device):
            trainer = Trainer(data, weights, Path(tmp) / "work", model, train)
            trainer.precision = precision
            precision.prepare_model(trainer.model)
            runs.append({"label": label, "trainer": trainer, "data": [], "compute": []})
        for step in range(args.warmup + args.steps):
            for run in runs:
                trainer = run["trainer"]
                start = time.perf_counter()
                batch = trainer.next_batch()
                _sync(device)
                mid = time.perf_counter()
                trainer.train_step(batch)  # .item() on the loss already waits for the device
                _sync(device)
                end = time.perf_counter()
                if step >= args.warmup:
                    run["data"].append(mid - start)
                    run["compute"].append(end - mid)
        return [
            {
                "label": run["label"],
                "in": run["trainer"].in_size,
                "out": run["trainer"].out_size,
                "data": statistics.mean(run["data"]),
                "compute": statistics.mean(run["compute"]),
            }
            for run in runs
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--aug-batch", type=int, default=8, help="tiles per augmentation call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--tile", type=int, default=132, help="output tile edge")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = pick_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device: {device} ({name}), torch {torch.__version__}")

    print(f"\nElastic deformation of {PAPER_TILE}x{PAPER_TILE} tiles (3x3 grid, sigma 10 px)")
    rows = bench_augmentation(device, args.aug_batch, args.repeats)
    baseline = rows[-1][1]
    print(f"{'method':<72} {'samples/s':>10} {'vs elasticdeform':>17}")
    for label, rate in rows:
        ratio = rate / baseline if np.isfinite(baseline) and np.isfinite(rate) else float("nan")
        print(f"{label:<72} {rate:>10.1f} {ratio:>16.1f}x")

    results = bench_training(args, device)
    first = results[0]
    print(
        f"\nTraining step: depth {args.depth}, base {args.base_channels}, tiles {first['in']} -> {first['out']} px, "
        f"batch {args.batch_size}, mean of {args.steps} steps after {args.warmup} warm-up; data = sample + copy"
        " + augment, compute = forward, loss, backward, step"
    )
    header = (
        f"{'precision':<32} {'data ms':>8} {'compute ms':>11} {'total ms':>9} {'steps/s':>8}"
        f" {'compute vs fp32 NCHW':>21} {'step vs fp32 NCHW':>18}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        total = result["data"] + result["compute"]
        print(
            f"{result['label']:<32} {1e3 * result['data']:>8.1f} {1e3 * result['compute']:>11.1f} {1e3 * total:>9.1f}"
            f" {1 / total:>8.2f} {first['compute'] / result['compute']:>20.2f}x"
            f" {(first['data'] + first['compute']) / total:>17.2f}x"
        )


if __name__ == "__main__":
    main()
