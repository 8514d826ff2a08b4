"""Benchmark: does ``torch.compile`` pay off on the CPU, compile time included?

For the small net (depth 4, base 16) in bf16 + channels_last (what ``precision: auto`` runs on a
CPU with native bf16) and in fp32 + channels_last, times eager vs ``torch.compile`` for

  train    a training step (forward, weighted loss, backward, SGD step) on a batch of tiles;
  predict  a forward + softmax of a batch of tiles in inference mode.

The compiled model's first call includes compilation. The end-to-end figure is the time of a
typical run: ``first call + (n - 1) x steady call`` for ``--train-steps`` steps and
``--predict-batches`` batches (the default pipeline trains 300 steps; a 2048^2 slide with 256^2
tiles is 64 tiles = 16 batches of 4), against ``n x steady eager call``. The project adopts
compile only if it wins end to end.

    PYTHONPATH=. python benchmarks/compile.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from unetflow.devices import Precision, explicit_precisions
from unetflow.model import UNet
from unetflow.losses import weighted_cross_entropy

CPU = torch.device("cpu")


def _steady(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` calls (after the caller's first call)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _first(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(args: argparse.Namespace, precision: Precision) -> list[tuple[str, float, float, float, int]]:
    """(what, first call s, steady eager s, steady compiled s, calls in a typical run)."""
    torch.manual_seed(0)
    net = precision.prepare_model(UNet(depth=args.depth, base_channels=args.base_channels))
    size = net.input_size(args.tile)
    x = precision.prepare_input(torch.randn(args.batch_size, 1, size, size))
    target = torch.randint(0, 2, (args.batch_size, args.tile, args.tile))
    weight = torch.rand(args.batch_size, args.tile, args.tile)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
    compiled = torch.compile(net)

    def train_step(model: torch.nn.Module) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(CPU):
            logits = model(x)
        weighted_cross_entropy(logits, target, weight).backward()
        optimizer.step()

    def forward(model: torch.nn.Module) -> None:
        model.eval()
        with torch.inference_mode(), precision.autocast(CPU):
            torch.softmax(model(x).float(), dim=1)

    rows = []
    runs = (("train step", train_step, args.train_steps), ("predict batch", forward, args.predict_batches))
    for what, fn, calls in runs:
        first = _first(lambda: fn(compiled))
        fn(net)  # eager warm-up
        eager = _steady(lambda: fn(net), args.repeats)
        steady = _steady(lambda: fn(compiled), args.repeats)
        rows.append((what, first, eager, steady, calls))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--tile", type=int, default=132, help="output tile edge")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=300, help="steps of a typical training run")
    parser.add_argument("--predict-batches", type=int, default=16, help="batches of a typical prediction")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, depth {args.depth},"
        f" base {args.base_channels}, out tile {args.tile}, batch {args.batch_size}"
    )
    header = (
        f"{'precision':<20} {'what':<14} {'compile+1st s':>13} {'eager s':>8} {'compiled s':>11} {'steady gain':>12}"
        f" {'typical run':>12} {'eager run s':>12} {'compiled run s':>15} {'end to end':>11}"
    )
    print(header)
    print("-" * len(header))
    for setting, precision in explicit_precisions(CPU):
        if setting not in args.precision:
            continue
        label = f"{precision.name}{' channels_last' if precision.channels_last else ''}"
        for what, first, eager, steady, calls in bench(args, precision):
            eager_run, compiled_run = calls * eager, first + (calls - 1) * steady
            print(
                f"{label:<20} {what:<14} {first:>13.1f} {eager:>8.3f} {steady:>11.3f} {eager / steady:>11.2f}x"
                f" {calls:>12} {eager_run:>12.1f} {compiled_run:>15.1f} {eager_run / compiled_run:>10.2f}x"
            )


if __name__ == "__main__":
    main()
