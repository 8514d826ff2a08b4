"""The whole pipeline through SLURM with the repository's profile, on a single-node test cluster.

``tests/slurm_cluster.py`` starts slurmctld, slurmd and munged on localhost (installing Debian's
packages if needed). The run uses ``profiles/slurm/config.yaml`` with only what cannot hold on
a 2-core test node replaced: the partition/account placeholders (the test cluster's partition,
no account: it has no accounting), and requests capped to the node's CPUs and memory. Everything
else, status polling with squeue and the GPU requests of train/predict (the node has one fake
GPU) included, is exercised as a user's cluster would see it.

The second half runs ``predict.scheduler: slurm`` on the same cluster: dask-jobqueue worker jobs
predict a 4096² slide exactly like the threaded scheduler, survive a cancelled worker, and leave
no job in ``squeue`` after success, a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from scipy import ndimage

from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_installed
from tiny_workflow import REPO, RUN_DIR, check, planned_jobs, prepare, snakemake
from unetflow.io.ome_zarr import open_ome_image
from unetflow.model import UNet, save_checkpoint
from unetflow.normalize import Normalization
from unetflow.predict import PredictOptions, predict_image
from unetflow.scheduling import WORKER_JOB_NAME, DaskRunner
from unetflow.store import StoreError, write_dataset

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
PLACEHOLDER = re.compile(r"^<.*>$")
PIPELINE = {"ingest_dataset", "ingest_slide", "weights", "train", "predict_split", "predict_slide", "tune", "evaluate"}
GPU_RULES = {"train", "predict_split", "predict_slide"}
LIMIT_S = 480


@pytest.fixture(scope="module")
def cluster() -> SlurmCluster:
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    with SlurmCluster() as running:
        yield running


def fit_profile(profile: dict[str, Any], cluster: SlurmCluster) -> dict[str, Any]:
    """The profile with placeholders filled for the test cluster and requests capped to its node."""

    def fit(resources: dict[str, Any]) -> dict[str, Any]:
        fitted = {}
        for key, value in resources.items():
            if key == "slurm_account":
                continue  # no accounting on the test cluster: submit without -A
            if isinstance(value, str) and PLACEHOLDER.match(value):
                assert key == "slurm_partition", f"unexpected placeholder {key}: {value}"
                value = cluster.partition
            elif key == "cpus_per_task":
                value = min(value, cluster.cpus)
            elif key == "mem_mb":
                value = f"min({value}, {cluster.memory_mb})"
            fitted[key] = value
        return fitted

    fitted = dict(profile)
    fitted["default-resources"] = fit(profile["default-resources"])
    fitted["set-resources"] = {rule: fit(res) for rule, res in profile.get("set-resources", {}).items()}
    fitted["set-threads"] = {rule: min(n, cluster.cpus) for rule, n in profile.get("set-threads", {}).items()}
    return fitted


def test_profile_is_ready_for_clusters_without_accounting() -> None:
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-status-command"] == "squeue"
    assert PLACEHOLDER.match(profile["default-resources"]["slurm_partition"])
    assert PLACEHOLDER.match(profile["default-resources"]["slurm_account"])
    for rule in GPU_RULES:
        resources = profile["set-resources"][rule]
        assert resources.get("gpu", 0) >= 1 or "gpu" in resources.get("gres", ""), f"{rule} requests no GPU"
    assert not any("slurm_extra" in res for res in profile["set-resources"].values()), "use gpu/gres, not slurm_extra"


def test_pipeline_runs_through_slurm(cluster: SlurmCluster, tmp_path: Path) -> None:
    workdir = prepare(tmp_path / "work")
    profile_dir = tmp_path / "profile"
    profile_dir.mkdir()
    fitted = fit_profile(yaml.safe_load(PROFILE.read_text()), cluster)
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(fitted, sort_keys=False))

    done = snakemake(
        workdir,
        "--profile", str(profile_dir),
        "--executor", "slurm",
        "--slurm-init-seconds-before-status-checks", "1",  # tiny jobs: poll early
        limit_s=LIMIT_S,
    )  # fmt: skip
    out = check(done)

    remote = set(re.findall(r"^rule (\w+):$", out, flags=re.MULTILINE))
    local = set(re.findall(r"^localrule (\w+):$", out, flags=re.MULTILINE))
    assert remote | local >= PIPELINE, f"rules that never ran: {PIPELINE - remote - local}"
    assert remote >= GPU_RULES, f"GPU rules must run as cluster jobs, not localrules: {GPU_RULES - remote}"
    jobs = {job["Comment"].removeprefix("rule_").split("_wildcards_")[0]: job for job in cluster.jobs()}
    assert set(jobs) == remote, f"SLURM ran {sorted(jobs)}, Snakemake submitted {sorted(remote)}\n{out[-3000:]}"
    for rule, job in jobs.items():
        assert job["JobState"] == "COMPLETED", f"{rule}: {job['JobState']}"
        asks_gpu = "gpu:1" in job.get("TresPerJob", "")
        assert asks_gpu == (rule in GPU_RULES), f"{rule}: TresPerJob={job.get('TresPerJob')}"

    summary = json.loads((workdir / RUN_DIR / "evaluation" / "test" / "summary.json").read_text())
    assert summary["n_images"] == 1
    assert len(list((workdir / RUN_DIR / "predictions" / "slides" / "slide").glob("*.ome.zarr"))) == 1
    assert planned_jobs(workdir) == {}, "outputs written through SLURM are not complete and up to date"


# -- predict.scheduler: slurm (dask-jobqueue worker jobs) ----------------------------------------
SLIDE = 4096
CHUNK = 512
WORKER_JOBS = 2
WORKERS_GONE_S = 30  # cancelled jobs pass through COMPLETING before squeue forgets them


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4096² synthetic slide store (smoothed noise, 512² chunks), a tiny model, and the
    prediction of the threaded scheduler that every SLURM run must reproduce exactly."""
    root = tmp_path_factory.mktemp("slide")
    rng = np.random.default_rng(7)
    image = ndimage.gaussian_filter(rng.normal(size=(1, SLIDE, SLIDE)).astype(np.float32), (0, 2, 2))
    store = write_dataset(
        root / "slide.zarr",
        {"giant": image / image.std()},
        split={"train": [], "val": []},
        chunk=CHUNK,
    )
    torch.manual_seed(0)
    net = UNet(in_channels=1, n_classes=2, depth=2, base_channels=4).eval()
    save_checkpoint(root / "m.pt", net, normalization=Normalization("zscore", mean=(0.0,), std=(1.0,)).to_json())
    reference = predict_image(root / "m.pt", store, "giant", root / "threads.ome.zarr", _options("threads"))
    return {"store": store, "model": root / "m.pt", "reference": reference}


def _options(scheduler: str, logs: Path | None = None, partition: str = "", **slurm: Any) -> PredictOptions:
    settings: dict[str, Any] = {"device": "cpu", "chunk": CHUNK, "tile": 256, "scheduler": scheduler, "progress_s": 2}
    if scheduler == "slurm":
        worker = {"partition": partition, "jobs": WORKER_JOBS, "min_jobs": WORKER_JOBS, "cores": 1}
        settings["slurm"] = {**worker, "memory": "2GB", "walltime": "00:10:00", "log_directory": str(logs), **slurm}
    return PredictOptions.from_settings(settings)


def _worker_jobs(cluster: SlurmCluster) -> list[dict[str, str]]:
    return [job for job in cluster.jobs() if job.get("JobName") == WORKER_JOB_NAME]


def _queued_workers() -> list[str]:
    """Job ids of worker jobs squeue still shows (pending, running, completing)."""
    out = subprocess.run(["squeue", "-h", "-n", WORKER_JOB_NAME, "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _assert_no_workers_left() -> None:
    deadline = time.monotonic() + WORKERS_GONE_S
    while _queued_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _queued_workers() == [], "worker jobs outlived the prediction"


def _assert_same_prediction(out: Path, reference: Path) -> None:
    got, want = open_ome_image(out), open_ome_image(reference)
    assert got.attrs["complete"] and got.attrs["fingerprint"] == want.attrs["fingerprint"]
    for level in range(len(want.levels)):
        assert np.array_equal(got.levels[level][:], want.levels[level][:]), f"probabilities, level {level}"
    for labels in ("semantic", "instances"):
        assert np.array_equal(got.label(labels).levels[0][:], want.label(labels).levels[0][:]), labels


def _wait_for(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _markers(out: Path) -> int:
    done = out.with_name(out.name + ".partial") / ".chunks-done"
    return len(list(done.iterdir())) if done.is_dir() else 0


def test_slurm_workers_predict_exactly_like_threads(
    cluster: SlurmCluster, slide: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = {job["JobId"] for job in _worker_jobs(cluster)}
    out = tmp_path / "slurm.ome.zarr"
    with caplog.at_level(logging.INFO, logger="unetflow.progress"):
        predict_image(slide["model"], slide["store"], "giant", out, _options("slurm", tmp_path / "logs", cluster.partition))
    _assert_same_prediction(out, slide["reference"])
    ran = [job for job in _worker_jobs(cluster) if job["JobId"] not in before]
    assert len(ran) == WORKER_JOBS, f"expected {WORKER_JOBS} worker jobs, SLURM ran {[j['JobId'] for j in ran]}"
    assert all(job["Partition"] == cluster.partition and job["NumCPUs"] == "1" for job in ran)
    lines = [r.getMessage() for r in caplog.records if "workers alive" in r.getMessage()]
    assert lines and lines[-1].startswith(f"predict giant: {(SLIDE // CHUNK) ** 2}/{(SLIDE // CHUNK) ** 2} chunks (100%)")
    assert len(list((tmp_path / "logs").glob("*.out"))) == WORKER_JOBS  # the workers' SLURM output
    _assert_no_workers_left()


def test_scancel_of_a_worker_mid_run_loses_nothing(cluster: SlurmCluster, slide: dict[str, Path], tmp_path: Path) -> None:
    """One worker job is cancelled once chunks are being written; the run still completes, equal
    to the threaded prediction. (The prediction stays in the main thread: dask-jobqueue can only
    be imported there.)"""
    out = tmp_path / "slurm.ome.zarr"
    killed: dict[str, Any] = {}

    def cancel_one_worker() -> None:
        deadline = time.monotonic() + 180
        while _markers(out) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        running = [job["JobId"] for job in _worker_jobs(cluster) if job["JobState"] == "RUNNING"]
        if running:
            subprocess.run(["scancel", running[0]], check=True)
            killed.update(job=running[0], written=_markers(out))

    before = {job["JobId"] for job in _worker_jobs(cluster)}
    killer = threading.Thread(target=cancel_one_worker)
    killer.start()
    try:
        predict_image(slide["model"], slide["store"], "giant", out, _options("slurm", tmp_path / "logs", cluster.partition))
    finally:
        killer.join()
    assert killed, "no running worker job to cancel"
    assert killed["written"] < (SLIDE // CHUNK) ** 2, "the run ended before a worker was lost"
    jobs = {job["JobId"]: job["JobState"] for job in _worker_jobs(cluster) if job["JobId"] not in before}
    assert jobs[killed["job"]] == "CANCELLED", jobs
    _assert_same_prediction(out, slide["reference"])
    _assert_no_workers_left()


def test_a_failure_closes_the_cluster(cluster: SlurmCluster, slide: dict[str, Path], tmp_path: Path) -> None:
    """A path the workers cannot see is a clear error, raised while the workers run; the error
    leaves the runner like any failure of a prediction, and the worker jobs are cancelled."""
    options = _options("slurm", tmp_path / "logs", cluster.partition)
    with pytest.raises(StoreError, match=r"nowhere.zarr: not visible to the dask workers on \S+"):
        with DaskRunner(options) as run:
            assert run.prepare([slide["store"]], "auto") == "cpu"  # the workers' own device
            assert _queued_workers(), "the workers should be up inside the runner"
            run.prepare([slide["store"], tmp_path / "nowhere.zarr"], "cpu")
    _assert_no_workers_left()


@pytest.mark.parametrize(
    ("signum", "when"),
    [(signal.SIGINT, "writing chunks"), (signal.SIGTERM, "workers starting")],
    ids=["ctrl-c-mid-run", "sigterm-at-start"],
)
def test_interrupted_prediction_leaves_no_worker_jobs(
    cluster: SlurmCluster, slide: dict[str, Path], tmp_path: Path, signum: int, when: str
) -> None:
    """Ctrl-C while chunks are written, SIGTERM (Snakemake or scancel stopping the predict job)
    while the worker jobs start: the CLI exits non-zero and cancels its worker jobs."""
    options = _options("slurm", tmp_path / "logs", cluster.partition)
    settings = {field: getattr(options, field) for field in ("device", "chunk", "tile", "scheduler", "slurm")}
    out = tmp_path / "predictions"
    command = [sys.executable, "-m", "unetflow", "predict", str(slide["model"]), str(slide["store"]), str(out)]
    # A test run started in the background by a non-interactive shell (CI) inherits SIGINT as
    # ignored, and Python then installs no KeyboardInterrupt handler; a user's terminal does not
    # ignore it, so the CLI gets the default disposition back, as at a terminal.
    process = subprocess.Popen(
        [*command, "--settings", json.dumps(settings)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        if when == "writing chunks":
            _wait_for(lambda: _markers(out.with_name(out.name + ".partial") / "giant.ome.zarr") >= 1, "the first chunk")
        else:
            _wait_for(_queued_workers, "worker jobs")
        assert _queued_workers(), f"no worker jobs while {when}"
        process.send_signal(signum)
        stdout, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0, stdout.decode()[-2000:]
    _assert_no_workers_left()
