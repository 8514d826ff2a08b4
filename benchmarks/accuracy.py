"""Benchmark: segmentation accuracy of the shipped configurations, end to end, on the test split.

Runs the workflow (``snakemake``) on each shipped config whose data is present -- the synthetic
default, ISBI 2012 and the DSB 2018 subset from ``../shared/data`` -- in a results folder of its
own, times it, and prints one table of the test-split figures (and the train split's, to tell
under- from overfitting) beside the published anchors. The table is also written as CSV.

Each run is the product as a user gets it: the config file as shipped, ``--cores`` as given. A
config whose data is absent is skipped with a line saying so. A finished run is reused (Snakemake
finds nothing to do), so the table can be rebuilt without retraining; ``--fresh`` starts over.

    .venv/bin/python benchmarks/accuracy.py                     # all three, 2 cores
    .venv/bin/python benchmarks/accuracy.py --only dsb2018 --cores 2
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "synthetic": "config/config.yaml",
    "isbi2012": "config/isbi2012.yaml",
    "dsb2018": "config/dsb2018.yaml",
}
# Published figures to read ours against (not the same budget, and not always the same split).
ANCHORS = {
    "isbi2012": "paper (hidden test set, depth 5 base 64, GPU): pixel 0.0611, Rand 0.0382",
    "dsb2018": "DSB 2018 winners / Cellpose / StarDist on the full stage-1 test: mean AP ~0.6-0.7 (F1@0.5 ~0.85)",
    "synthetic": "issue 11 target: F1@0.5 >= 0.95",
}
COLUMNS = ("pixel_error", "rand_error", "f1@0.5", "mean_ap", "seg", "fg_iou")


def load_config(name: str) -> dict:
    """The shipped config layered over config/config.yaml, as Snakemake reads it."""
    base = yaml.safe_load((ROOT / CONFIGS["synthetic"]).read_text())
    if name == "synthetic":
        return base
    layered = yaml.safe_load((ROOT / CONFIGS[name]).read_text())
    for key, value in layered.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def data_present(config: dict) -> bool:
    dataset = config["dataset"]
    return dataset["format"] == "synthetic" or (ROOT / dataset["path"]).exists()


def run_workflow(name: str, results: Path, cores: int) -> float:
    """Run the workflow for config ``name`` into ``results``; wall seconds of the workflow.

    Every run adds its wall time to ``<results>/wall_seconds.json``, so a finished run that is
    reused (or a stage rerun after a code change) still reports the time the whole workflow took.
    """
    command = [
        sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", str(ROOT / CONFIGS[name]),
        "--config", f"results={results}",
    ]  # fmt: skip
    log = results / "snakemake.log"
    results.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        code = subprocess.call(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{name}: snakemake failed (exit {code}); see {log}")
    record = results / "wall_seconds.json"
    total = (json.loads(record.read_text()) if record.exists() else 0.0) + time.perf_counter() - start
    record.write_text(json.dumps(total))
    return total


def summary(results: Path, config: dict, split: str) -> dict:
    path = results / config["dataset"]["name"] / config["run"] / "evaluation" / split / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def row(name: str, config: dict, results: Path, minutes: float) -> dict:
    test, train = summary(results, config, "test"), summary(results, config, "train")

    def figure(s: dict, key: str) -> float | None:
        if key == "f1@0.5":
            return s["curves"]["f1"][0] if s else None
        return s.get(key)

    model, train_cfg = config["model"], config["train"]
    out = {
        "dataset": name,
        "model": f"depth {model.get('depth')}, base {model.get('base_channels')}",
        "target": config.get("weights", {}).get("target", {}).get("mode", "boundary"),
        "precision": train_cfg.get("precision", "auto"),
        "steps": train_cfg.get("steps"),
        "minutes": round(minutes, 1),
        "postprocess": (test.get("postprocess") or {}).get("method"),
        "test_images": test.get("n_images"),
        "val_doubles_as_test": test.get("val_doubles_as_test"),
    }
    for key in COLUMNS:
        value = figure(test, key)
        out[key] = None if value is None else round(float(value), 4)
    value = figure(train, "f1@0.5")
    out["train_f1@0.5"] = None if value is None else round(float(value), 4)
    out["anchor"] = ANCHORS[name]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="datasets to run (default: all)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "accuracy")
    parser.add_argument("--csv", type=Path, default=None, help="CSV path (default: <results>/accuracy.csv)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier results of these runs first")
    args = parser.parse_args()

    rows = []
    for name in args.only or list(CONFIGS):
        config = load_config(name)
        if not data_present(config):
            print(f"{name}: data not found at {config['dataset']['path']}; skipped")
            continue
        results = args.results / name
        if args.fresh:
            shutil.rmtree(results, ignore_errors=True)
        print(f"{name}: running the workflow ({CONFIGS[name]}, {args.cores} cores) ...", flush=True)
        minutes = run_workflow(name, results, args.cores) / 60
        rows.append(row(name, config, results, minutes))

    if not rows:
        raise SystemExit("nothing was run")
    header = list(rows[0])
    widths = {key: max(len(key), *(len(str(r[key])) for r in rows)) for key in header if key != "anchor"}
    print("\n" + "  ".join(key.ljust(widths[key]) for key in widths))
    for r in rows:
        print("  ".join(str(r[key]).ljust(widths[key]) for key in widths))
    print("\nanchors:")
    for r in rows:
        print(f"  {r['dataset']}: {r['anchor']}")
    out = args.csv or args.results / "accuracy.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
