"""The whole pipeline through SLURM with the repository's profile, on a single-node test cluster.

``tests/slurm_cluster.py`` starts slurmctld, slurmd and munged on localhost (installing Debian's
packages if needed). The run uses ``profiles/slurm/config.yaml`` with only what cannot hold on
a 2-core test node replaced: the partition/account placeholders (the test cluster's partition,
no account: it has no accounting), and requests capped to the node's CPUs and memory. Everything
else, status polling with squeue and the GPU requests of train/predict (the node has one fake
GPU) included, is exercised as a user's cluster would see it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_installed
from tiny_workflow import REPO, RUN_DIR, check, planned_jobs, prepare, snakemake

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

    summary = json.loads((workdir / RUN_DIR / "evaluation" / "summary.json").read_text())
    assert summary["n_images"] == 1
    assert len(list((workdir / RUN_DIR / "predictions" / "slides" / "slide").glob("*.ome.zarr"))) == 1
    assert planned_jobs(workdir) == {}, "outputs written through SLURM are not complete and up to date"
