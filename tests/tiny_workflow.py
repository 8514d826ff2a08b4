"""Run the real Snakefile on a tiny config in a scratch directory (shared by the workflow tests).

The working directory gets ``config/config.yaml`` (what the Snakefile's ``configfile:`` reads,
relative to the working directory) and receives every output, log and ``.snakemake`` record; the
repository is only read. Tiny means seconds per stage on 2 CPU cores: four 96 px images, a
depth-2 U-Net with 4 base channels trained for 4 steps, one 256 px slide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
BIN = Path(sys.executable).parent  # the venv's bin: snakemake, and the python that jobs run

TINY_CONFIG: dict[str, Any] = {
    "results": "results",
    "run": "tiny",
    "dataset": {
        "name": "tiny",
        "format": "synthetic",
        "chunk": 64,
        "synthetic": {"n_images": 4, "size": 96, "seed": 0},
        "split": {"val_fraction": 0.25, "seed": 0},
    },
    "slides": [{"name": "slide", "format": "synthetic", "size": 256, "chunk": 128}],
    "model": {"depth": 2, "base_channels": 4},
    "train": {"device": "cpu", "steps": 4, "val_every": 2, "checkpoint_every": 2, "batch_size": 2, "tile": 32},
    "predict": {"device": "cpu", "tile": 64, "chunk": 128},
    "evaluate": {"overlays": 1},
}
RUN_DIR = Path("results/tiny/tiny")  # <results>/<dataset.name>/<run>, relative to the working directory


def prepare(workdir: Path, config: dict[str, Any] | None = None) -> Path:
    """Write the tiny config (or ``config``) where the Snakefile looks for it; returns ``workdir``."""
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(TINY_CONFIG if config is None else config, sort_keys=False, allow_unicode=True)
    (workdir / "config" / "config.yaml").write_text(text, encoding="utf-8")
    return workdir


def snakemake(workdir: Path, *args: str, limit_s: int = 300, activated: bool = True) -> subprocess.CompletedProcess:
    """``snakemake -s <repo>/Snakefile ARGS`` in ``workdir`` under ``timeout -k 10 limit_s``.

    With ``activated`` the venv's bin leads PATH, as after ``source .venv/bin/activate`` (and,
    under SLURM, the job steps find snakemake); without it the venv's bin is taken off PATH, as
    when ``.venv/bin/snakemake`` is called from a fresh shell. Output is captured; stderr is
    merged into stdout.
    """
    others = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN)] * activated + others)}
    command = ["timeout", "-k", "10", str(limit_s), str(BIN / "snakemake"), "-s", str(SNAKEFILE), *args]
    return subprocess.run(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check(done: subprocess.CompletedProcess) -> str:
    """The output of a finished snakemake call; fails with its tail when it did not succeed."""
    assert done.returncode == 0, f"{' '.join(done.args)} exited with {done.returncode}:\n{done.stdout[-6000:]}"
    return done.stdout


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """{rule: job count} a dry run would execute (the target rule ``all`` left out)."""
    out = check(snakemake(workdir, "--dry-run", "--quiet", "rules", *args, limit_s=120))
    if "Nothing to be done" in out:
        return {}
    table = re.search(r"^job\s+count\n-+\s+-+\n(.*?)^total\s+\d+$", out, flags=re.MULTILINE | re.DOTALL)
    assert table is not None, f"no job table in the dry run's output:\n{out}"
    jobs = {rule: int(count) for rule, count in (line.split() for line in table.group(1).strip().splitlines())}
    jobs.pop("all", None)
    return jobs
