"""The whole workflow through Snakemake on a tiny config, in a scratch working directory."""

from __future__ import annotations

import json
import re

import pytest
import yaml
import zarr

from ngff import assert_valid_ngff
from tiny_workflow import REPO, RUN_DIR, TINY_CONFIG, check, prepare, snakemake


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = prepare(tmp_path_factory.mktemp("workflow"))
    check(snakemake(workdir, "--cores", "2", limit_s=600))
    return workdir


@pytest.mark.slow
def test_pipeline_produces_every_store(finished_run):
    results = finished_run / "results"
    data = zarr.open_group(str(results / "tiny" / "data.zarr"), mode="r")
    meta = data.attrs["unetflow"]
    split = meta["split"]
    assert len(meta["names"]) == 4 and (len(split["train"]), len(split["val"]), len(split["test"])) == (2, 1, 1)
    weights = zarr.open_group(str(results / "tiny" / "weights.zarr"), mode="r")
    assert sorted(weights["weights"].array_keys()) == sorted(meta["names"])
    run = finished_run / RUN_DIR
    assert (run / "model" / "best.pt").is_file() and (run / "model" / "metrics.csv").is_file()
    for name in ("test", "train"):  # scored (test: the reported figures; train: under- or overfitting)
        predicted = sorted(p.name for p in (run / "predictions" / name).iterdir() if not p.name.startswith("."))
        assert predicted == [f"{image}.ome.zarr" for image in split[name]]
        scored = json.loads((run / "evaluation" / name / "summary.json").read_text())
        assert scored["split"] == name and scored["images"] == split[name] and not scored["val_doubles_as_test"]
        assert 0.0 <= scored["pixel_error"] <= 1.0
    # val is predicted for tune, whose choice evaluate applied
    predicted = sorted(p.name for p in (run / "predictions" / "val").iterdir() if not p.name.startswith("."))
    assert predicted == [f"{image}.ome.zarr" for image in split["val"]]
    tuned = json.loads((run / "tuned.json").read_text())
    assert tuned["images"] == split["val"] and tuned["best"]["score"] >= tuned["defaults"]["score"]
    assert scored["postprocess"]["method"] == "tuned" and scored["postprocess"]["tuned"] == tuned["best"]
    slide = zarr.open_group(str(run / "predictions" / "slides" / "slide" / "slide.ome.zarr"), mode="r")
    size = TINY_CONFIG["slides"][0]["size"]
    assert slide["0"].shape[-2:] == (size, size)
    written = sorted(run.rglob("*.ome.zarr"))
    assert len(written) == 1 + len(split["test"]) + len(split["train"]) + len(split["val"])  # slide, scored, tuned on
    for prediction in written:
        assert_valid_ngff(prediction)
    for plot in ("dataset.png", "weights.png"):
        assert (results / "tiny" / "plots" / plot).stat().st_size > 5000
    assert (run / "plots" / "tuning.png").stat().st_size > 5000
    # the bioimage.io package (its export ran bioimage.io's test_model), covered by the test overlays
    package = run / "bioimageio"
    assert yaml.safe_load((package / "rdf.yaml").read_text())["type"] == "model"
    assert (package / "cover.png").read_bytes() == (run / "plots" / "evaluation_test_overlays.png").read_bytes()
    assert not list(results.rglob(".*tmp*")) and not list(results.rglob("*.partial"))
    # the training state stays beside the model, so raising train.steps continues from it
    assert (run / "model.checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_rerun_is_a_no_op_and_report_builds(finished_run):
    assert "Nothing to be done" in check(snakemake(finished_run, "--dry-run"))
    check(snakemake(finished_run, "--report", "report.html"))
    report = finished_run / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000


@pytest.mark.slow
def test_jobs_run_in_an_odd_results_path_without_an_activated_venv(tmp_path):
    # a space and non-ASCII letters in `results` once split the unquoted `> {log}` redirect, and
    # jobs of `.venv/bin/snakemake` without `source .venv/bin/activate` found no zarr
    results = "rés ults ü"
    workdir = prepare(tmp_path, dict(TINY_CONFIG, results=results))
    check(snakemake(workdir, "--cores", "2", f"{results}/tiny/data.zarr", activated=False))
    assert (workdir / results / "tiny" / "data.zarr" / "zarr.json").is_file()
    log = workdir / results / "logs" / "tiny" / "tiny" / "ingest_dataset.log"
    assert log.is_file()
    assert sorted(p.name for p in workdir.iterdir() if not p.name.startswith(".")) == ["config", results]


def test_readme_builds_the_report_of_a_configfile_run_with_that_configfile():
    # a bare `snakemake --report` after a `--configfile` run fails ("marked for report but does
    # not exist"): every README line that runs with a --configfile builds its report with it
    commands = re.findall(r"^snakemake [^\n#]*", (REPO / "README.md").read_text(), flags=re.MULTILINE)
    runs = {m.group(1) for c in commands if "--report" not in c for m in [re.search(r"--configfile (\S+)", c)] if m}
    reports = {m.group(1) for c in commands if "--report" in c for m in [re.search(r"--configfile (\S+)", c)] if m}
    assert runs and runs <= reports


def test_typo_in_config_fails_before_any_job(tmp_path):
    workdir = prepare(tmp_path)
    bad = dict(TINY_CONFIG, train={"stpes": 3})
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(bad))
    done = snakemake(workdir, "--cores", "1", limit_s=120)
    assert done.returncode != 0 and "train: Additional properties are not allowed ('stpes' was unexpected)" in done.stdout
    assert len(done.stdout.splitlines()) < 20, done.stdout  # the key, not the whole schema after it
    assert not (workdir / "results").exists()


def test_lint_is_clean():
    done = snakemake(REPO, "--lint", limit_s=300)
    assert done.returncode == 0 and "Lints for" not in done.stdout, done.stdout
