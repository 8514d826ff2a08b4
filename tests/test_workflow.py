"""The whole workflow through Snakemake on a tiny config, in a temporary copy of the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = {
    "results": "results",
    "run": "tiny",
    "dataset": {"name": "tiny", "chunk": 64, "split": {"val_fraction": 0.25}, "synthetic": {"n_images": 4, "size": 96}},
    "slides": [{"name": "slide", "format": "synthetic", "size": 300, "chunk": 128}],
    "model": {"depth": 2, "base_channels": 4},
    "train": {"steps": 6, "val_every": 3, "checkpoint_every": 3, "batch_size": 2, "tile": 36},
    "predict": {"tile": 64, "chunk": 128, "batch_size": 2, "pyramid_levels": 2},
    "evaluate": {"overlays": 1},
}


def copy_workflow(dest: Path) -> None:
    """What a user clones: the Snakefile, workflow/, config/ and envs/ (the package is installed)."""
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config", "envs", "unetflow"):
        if (ROOT / folder).exists():
            shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml", *args]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    copy_workflow(workdir)
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    snakemake(workdir)
    return workdir


@pytest.mark.slow
def test_pipeline_produces_every_store(finished_run):
    results = finished_run / "results"
    data = zarr.open_group(str(results / "tiny" / "data.zarr"), mode="r")
    meta = data.attrs["unetflow"]
    assert len(meta["names"]) == 4 and len(meta["split"]["val"]) == 1
    weights = zarr.open_group(str(results / "tiny" / "weights.zarr"), mode="r")
    assert sorted(weights["weights"].array_keys()) == sorted(meta["names"])
    model = results / "tiny" / "tiny" / "model"
    assert (model / "best.pt").is_file() and (model / "metrics.csv").is_file()
    val_pred = results / "tiny" / "tiny" / "predictions" / "val"
    assert sorted(p.name for p in val_pred.iterdir()) == [f"{meta['split']['val'][0]}.ome.zarr"]
    slide_pred = zarr.open_group(str(results / "tiny" / "tiny" / "predictions" / "slides" / "slide" / "slide.ome.zarr"), mode="r")
    assert slide_pred["0"].shape[-2:] == (300, 300)
    summary = json.loads((results / "tiny" / "tiny" / "evaluation" / "summary.json").read_text())
    assert 0.0 <= summary["pixel_error"] <= 1.0
    assert not list(results.rglob(".*tmp*")) and not list(results.rglob("*.partial"))


@pytest.mark.slow
def test_rerun_is_a_no_op_and_report_builds(finished_run):
    dry = snakemake(finished_run, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    snakemake(finished_run, "--report", "report.html")
    report = finished_run / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000


@pytest.mark.slow
def test_typo_in_config_fails_before_any_job(tmp_path):
    copy_workflow(tmp_path)
    bad = dict(TINY_CONFIG, train={"stpes": 3})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(bad))
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "stpes" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr, result.stdout + result.stderr
