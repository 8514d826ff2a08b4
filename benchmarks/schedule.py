"""Benchmark of ``train.schedule``: the same short run under each learning-rate schedule.

Trains one small U-Net per schedule (same seed, data, steps) on a dataset's train split and
prints the best val foreground IoU and the mean training loss over the last tenth of the steps,
each as a ratio to the constant learning rate (the behaviour before schedules existed). Short
runs favour schedules that decay (the rate is small when the run ends); this is a check that the
default does not hurt a budget-limited run, not a tuning study.

    python benchmarks/schedule.py --dsb ../shared/data/dsb2018/stage1_train     # ~10 min on 2 cores
    python benchmarks/schedule.py --steps 1000 --depth 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from unetflow.cli import main as cli_main
from unetflow.config import stage_settings
from unetflow.train import Trainer

SCHEDULES = ("constant", "poly", "cosine")


def prepare(root: Path, dsb: str | None) -> tuple[Path, Path]:
    """Ingest (DSB 2018 subset, or the synthetic generator) with a train/val/test split, then weights."""
    dataset = {"split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}, "chunk": 256}
    dataset |= {"format": "dsb", "path": dsb, "name": "dsb"} if dsb else {"synthetic": {"n_images": 10}}
    data, weights = root / "data.zarr", root / "weights.zarr"
    assert cli_main(["ingest", "dataset", str(data), "--settings", json.dumps(dataset)]) == 0
    assert cli_main(["weights", str(data), str(weights), "--settings", "{}"]) == 0
    return data, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsb", help="DSB 2018 stage1_train folder (default: synthetic data)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, weights = prepare(Path(tmp), args.dsb)
        model = stage_settings("model", json.dumps({"depth": args.depth, "base_channels": args.base_channels}))
        rows = []
        for name in SCHEDULES:
            train = stage_settings("train", json.dumps({
                "device": args.device, "num_threads": args.threads, "optimizer": "adam", "lr": 1e-3, "tile": 92,
                "steps": args.steps, "val_every": max(1, args.steps // 4), "checkpoint_every": args.steps,
                "select": "fg_iou",
                "schedule": {"name": name, "warmup_steps": 0 if name == "constant" else args.warmup_steps},
            }))
            start = time.perf_counter()
            trainer = Trainer(data, weights, Path(tmp) / name, model, train)
            summary = trainer.run(progress=False)
            tail = [row["train_loss"] for row in trainer.history[-max(1, args.steps // 10):]]
            rows.append((name, summary["best_val_score"], sum(tail) / len(tail), time.perf_counter() - start))
    base_iou, base_loss = rows[0][1], rows[0][2]
    print(f"{'schedule':<10} {'best val IoU':>12} {'x constant':>10} {'late train loss':>15} {'x constant':>10} {'s':>6}")
    for name, iou, loss, seconds in rows:
        print(f"{name:<10} {iou:>12.3f} {iou / base_iou:>10.3f} {loss:>15.4f} {loss / base_loss:>10.3f} {seconds:>6.0f}")


if __name__ == "__main__":
    main()
