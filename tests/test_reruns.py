"""Editing one config section reruns exactly the stages that read it, and what depends on them.

Each rule's params carry only the config slice its stage reads, and the workflow profile's
rerun-triggers include ``params``; so after a complete run, a dry run with one setting changed
must list just the rules downstream of the first stage that reads it. The complete run is real
(the tiny config, ~1 minute on 2 cores) and shared by all tests here; the edits are overlay
config files (``--configfile`` merges them over config/config.yaml), so the run stays intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tiny_workflow import RUN_DIR, check, planned_jobs, prepare, snakemake

pytestmark = pytest.mark.slow

PREDICT = {"predict_split": 3, "predict_slide": 1}  # val (for tune), test and train splits, the slide
TUNE = {"tune": 1}
EVALUATE = {"evaluate": 2, "export": 1}  # test and train; the bioimage.io package documents the test figures


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = prepare(tmp_path_factory.mktemp("reruns"))
    check(snakemake(workdir, "--cores", "2", limit_s=600))
    assert (workdir / RUN_DIR / "evaluation" / "test" / "summary.json").is_file()
    return workdir


def _jobs_after_edit(workdir: Path, tmp_path: Path, edit: dict[str, Any]) -> dict[str, int]:
    overlay = tmp_path / "edit.yaml"
    overlay.write_text(yaml.safe_dump(edit))
    return planned_jobs(workdir, "--configfile", str(overlay))


def test_complete_run_is_up_to_date(completed: Path) -> None:
    assert planned_jobs(completed) == {}


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param({"predict": {"tile": 32}}, {**PREDICT, **TUNE, **EVALUATE}, id="inference-setting"),
        pytest.param(
            {"weights": {"w0": 5}}, {"weights": 1, "train": 1, **PREDICT, **TUNE, **EVALUATE}, id="weight-map-setting"
        ),
        pytest.param({"evaluate": {"min_size": 3}}, EVALUATE, id="metric-setting"),
        # the tuned choice reaches the evaluations and the slide, nothing upstream
        pytest.param({"tune": {"objective": "ap"}}, {**TUNE, **EVALUATE, "predict_slide": 1}, id="tuning-setting"),
        pytest.param({"train": {"steps": 6}}, {"train": 1, **PREDICT, **TUNE, **EVALUATE}, id="training-setting"),
        # which splits are scored is not a setting of any one evaluation: the others stay
        pytest.param({"evaluate": {"splits": ["test"]}}, {}, id="fewer-splits"),
        pytest.param({"evaluate": {"splits": ["test", "train", "val"]}}, {"evaluate": 1}, id="val-split"),  # tune predicted val
        pytest.param({"export": {"test_size": 64}}, {"export": 1}, id="export-setting"),
        # whether the package is in the default target is not a setting of the package
        pytest.param({"export": {"bioimageio": False}}, {}, id="export-off"),
        # an old config without a test split: test reuses the val predictions (val, train
        # predicted), and nothing is tuned on the images that are scored
        pytest.param(
            {"dataset": {"split": {"val_fraction": 0.25, "test_fraction": None, "seed": 0}}},
            {"ingest_dataset": 1, "weights": 1, "train": 1, "predict_split": 2, "predict_slide": 1, **EVALUATE},
            id="val-doubles-as-test",
        ),
        pytest.param(  # no val split: no tuning, the defaults apply
            {"dataset": {"split": {"val_fraction": 0, "test_fraction": 0.25, "seed": 0}}},
            {"ingest_dataset": 1, "weights": 1, "train": 1, "predict_split": 2, "predict_slide": 1, **EVALUATE},
            id="no-val-split",
        ),
        pytest.param(
            {"model": {"normalization": {"method": "zscore"}}},
            {"train": 1, **PREDICT, **TUNE, **EVALUATE},
            id="normalisation-is-the-models-not-the-stores",
        ),
        pytest.param(  # a slide store holds pixels as acquired: the dataset's split is no concern of it
            {"dataset": {"split": {"seed": 1}}},
            {"ingest_dataset": 1, "weights": 1, "train": 1, **PREDICT, **TUNE, **EVALUATE},
            id="dataset-setting",
        ),
    ],
)
def test_edit_reruns_only_dependent_stages(
    completed: Path, tmp_path: Path, edit: dict[str, Any], expected: dict[str, int]
) -> None:
    assert _jobs_after_edit(completed, tmp_path, edit) == expected


def test_slide_edit_leaves_the_evaluation_alone(completed: Path, tmp_path: Path) -> None:
    """A slide is predicted but never evaluated: changing it must not touch the validation chain."""
    slides = [{"name": "slide", "format": "synthetic", "size": 256, "chunk": 128, "seed": 7}]
    assert _jobs_after_edit(completed, tmp_path, {"slides": slides}) == {"ingest_slide": 1, "predict_slide": 1}


def test_forcerun_and_until(completed: Path) -> None:
    """The documented ways to redo one stage: -R reruns it and everything after, --until stops early."""
    assert planned_jobs(completed, "--forcerun", "weights") == {"weights": 1, "train": 1, **PREDICT, **TUNE, **EVALUATE}
    assert planned_jobs(completed, "--forcerun", "weights", "--until", "train") == {"weights": 1, "train": 1}
