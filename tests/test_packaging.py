"""Packaging hygiene: one version, the workflow catalog's files, a license, snakefmt-formatted rules.

What a user (or the Snakemake workflow catalog) meets before running anything: ``unetflow
--version`` agrees with the packaged version, ``pip install unetflow`` pulls only what the
library imports (Snakemake is the ``workflow`` extra the Makefile installs), the catalog's tiny
test config plans the whole pipeline, and the Snakefile and rule files are formatted as
``snakefmt`` writes them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

import unetflow
from tiny_workflow import REPO, planned_jobs, prepare
from unetflow.config import validate_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def test_version_has_one_source_and_the_cli_prints_it() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"], "pyproject must not repeat the version"
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "unetflow.__version__"}
    done = subprocess.run(
        [sys.executable, "-m", "unetflow", "--version"], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.split() == ["unetflow", unetflow.__version__]


def test_snakemake_is_the_workflow_extra_and_the_makefile_installs_it() -> None:
    core = " ".join(PYPROJECT["project"]["dependencies"])
    workflow = " ".join(PYPROJECT["project"]["optional-dependencies"]["workflow"])
    assert "snakemake" not in core, "the library never imports snakemake: it belongs in the workflow extra"
    assert "snakemake>=" in workflow and "snakemake-executor-plugin-slurm" in workflow
    extras = {part.strip() for line in (REPO / "Makefile").read_text().splitlines() if 'pip install -e ".[' in line
              for part in line.split('".[')[1].split("]")[0].split(",")}
    assert set(PYPROJECT["project"]["optional-dependencies"]) <= extras, "make install must install every extra"


def test_license_file_matches_pyproject() -> None:
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    assert text.startswith("MIT License") and "unetflow developers" in text


def test_catalog_test_config_is_valid_and_plans_every_stage(tmp_path: Path) -> None:
    """The catalog runs the workflow with ``--directory .test``: that config is complete and small."""
    config = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
    validate_config(config)
    jobs = planned_jobs(prepare(tmp_path, config))
    assert {"ingest_dataset", "ingest_slide", "weights", "train", "evaluate"} <= set(jobs), jobs
    assert any(rule.startswith("predict") for rule in jobs), jobs


def test_catalog_description_file() -> None:
    meta = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    deployment = meta["usage"]["software-stack-deployment"]
    assert deployment["conda"] is True, "every rule has a conda: env (tests/test_envs.py)"
    assert meta["usage"]["report"] is True


def test_snakefile_and_rules_are_snakefmt_formatted() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", *map(str, RULE_FILES)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert done.returncode == 0, f"run `snakefmt Snakefile workflow/rules/*.smk`:\n{done.stdout}{done.stderr}"
