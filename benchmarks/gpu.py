"""Benchmark: the paper-size U-Net on a CUDA GPU (run through benchmarks/gpu.sh).

Three tables, each timed after warm-up with the device synchronised:

  augmentation  device-side elastic + full augmentation of 572^2 tiles vs the ``elasticdeform``
                package on the CPU, samples/s (``benchmarks/train.py``'s measurement);
  training      steps/s of the paper's net (depth 5, base 64, 572^2 input -> 388^2 output) with and
                without AMP (``train.precision``: fp32 vs the GPU's bf16/fp16 autocast), the real
                ``Trainer`` (sampling, copy, augmentation,
                forward, weighted loss, backward, step);
  prediction    MP/s of ``predict_image`` with the paper's net over a ``--slide``^2 zarr slide on
                the GPU, everything included: reading zarr, tiles, stitching, writing
                probabilities, argmax, instance labels and the pyramid.

``--dry`` runs the same code on the CPU with a tiny net and tiny sizes, to check that it runs.

    benchmarks/gpu.sh                         # CUDA tests, then this script; skips without a GPU
    .venv/bin/python benchmarks/gpu.py --dry  # the CPU check
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from predict import make_model, make_slide  # benchmarks/predict.py
from train import PAPER_TILE, bench_augmentation, bench_training  # benchmarks/train.py

from unetflow.predict import PredictOptions, predict_image

PAPER = {"depth": 5, "base_channels": 64, "tile": 388}  # 572^2 input tiles
DRY = {"depth": 2, "base_channels": 4, "tile": 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny CPU run: checks the script, measures nothing")
    parser.add_argument("--slide", type=int, default=16384, help="edge of the predicted slide (px)")
    parser.add_argument("--chunk", type=int, default=2048, help="predict.chunk")
    parser.add_argument("--predict-batch", type=int, default=16, help="predict.batch_size")
    parser.add_argument("--train-batch", type=int, default=1, help="train.batch_size (the paper: 1 tile)")
    parser.add_argument("--aug-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    net = DRY if args.dry else PAPER
    device = torch.device("cpu" if args.dry else "cuda")
    if args.dry:
        args.slide, args.chunk, args.predict_batch, args.aug_batch, args.steps = 256, 128, 2, 1, 2
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: torch sees no CUDA GPU (use --dry for the CPU check)")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (dry run)"
    print(f"device: {device} ({name}), torch {torch.__version__}, bf16 supported:"
          f" {device.type == 'cuda' and torch.cuda.is_bf16_supported()}")  # fmt: skip

    print(f"\nAugmentation of {PAPER_TILE}^2 tiles, batch {args.aug_batch}")
    rows = bench_augmentation(device, args.aug_batch, repeats=1 if args.dry else 3)
    for label, rate in rows:
        print(f"{label:<72} {rate:>10.1f} samples/s  {rate / rows[-1][1]:>6.1f}x elasticdeform")

    print(f"\nTraining, depth {net['depth']}, base {net['base_channels']}, batch {args.train_batch}")
    train_args = argparse.Namespace(
        depth=net["depth"], base_channels=net["base_channels"], tile=net["tile"], batch_size=args.train_batch,
        images=2, image_size=64 if args.dry else 1024, warmup=1 if args.dry else 3, steps=args.steps,
    )  # fmt: skip
    for result in bench_training(train_args, device):  # fp32, then the GPU's autocast dtype (AMP)
        step = result["data"] + result["compute"]
        print(
            f"{result['label']:<24}: {result['in']}^2 -> {result['out']}^2, {1 / step:7.2f} steps/s"
            f" (data {1e3 * result['data']:.1f} ms + compute {1e3 * result['compute']:.1f} ms per step)"
        )

    work = Path(tempfile.mkdtemp(prefix="unetflow-gpu-"))
    try:
        make_model(work / "model.pt", net["base_channels"], net["depth"])
        store = make_slide(work / "slide.zarr", args.slide, args.chunk)
        options = PredictOptions.from_settings(
            {"device": device.type, "tile": net["tile"], "chunk": args.chunk, "batch_size": args.predict_batch}
        )
        start = time.perf_counter()
        predict_image(work / "model.pt", store, "slide", work / "out.ome.zarr", options)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mp = args.slide**2 / 1e6
    print(
        f"\nPrediction of a {args.slide}^2 zarr slide ({mp:.0f} MP), chunk {args.chunk}, batch {args.predict_batch},"
        f" all outputs: {seconds:.1f} s, {mp / seconds:.2f} MP/s"
    )


if __name__ == "__main__":
    main()
