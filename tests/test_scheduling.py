"""The SLURM scheduler's pieces that need no SLURM: the worker job script made from
``predict.slurm`` and how many worker jobs a computation asks for. The jobs themselves run in
``tests/test_slurm.py`` (marked ``slurm``)."""

from __future__ import annotations

import sys

import pytest

from unetflow.predict import PredictOptions
from unetflow.scheduling import WORKER_JOB_NAME, package_root, start_slurm_cluster, worker_jobs_for


def _slurm(**settings: object) -> dict:
    return PredictOptions.from_settings({"scheduler": "slurm", "slurm": settings}).slurm


@pytest.mark.parametrize(
    ("n_tasks", "settings", "expected"),
    [
        (64, {"jobs": 4, "min_jobs": 1, "cores": 4}, (1, 4)),  # enough chunks for every job
        (6, {"jobs": 4, "min_jobs": 1, "cores": 4}, (1, 2)),  # 6 chunks keep 2 jobs of 4 cores busy
        (6, {"jobs": 4, "min_jobs": 3, "cores": 4}, (2, 2)),  # never keep more jobs than are useful
        (1, {"jobs": 8, "min_jobs": 1, "cores": 1}, (1, 1)),
    ],
)
def test_worker_jobs_follow_the_chunk_count(n_tasks: int, settings: dict, expected: tuple[int, int]) -> None:
    assert worker_jobs_for(n_tasks, _slurm(**settings)) == expected


def test_worker_job_script_carries_the_config_and_this_environment(tmp_path) -> None:
    settings = _slurm(
        partition="gpu-a100",
        account="lab42",
        cores=6,
        memory="24GB",
        walltime="02:30:00",
        gpus=1,
        extra=["--qos=long"],
        log_directory=str(tmp_path / "logs"),
    )
    cluster = start_slurm_cluster(settings)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for directive in (
        f"#SBATCH -J {WORKER_JOB_NAME}", "#SBATCH -p gpu-a100", "#SBATCH -A lab42", "#SBATCH --cpus-per-task=6",
        "#SBATCH -t 02:30:00", "#SBATCH --qos=long", "#SBATCH --gpus=1", f"#SBATCH -o {tmp_path / 'logs'}",
    ):  # fmt: skip
        assert directive in script, f"{directive!r} missing from\n{script}"
    assert f"export PYTHONPATH={package_root()}" in script
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script
    assert "--nthreads 6 --memory-limit 22.35GiB" in script  # one worker process per job, 24 GB
    assert (tmp_path / "logs").is_dir()


def test_schema_rejects_an_unknown_slurm_key() -> None:
    from unetflow.config import ConfigError

    with pytest.raises(ConfigError, match="slurm"):
        PredictOptions.from_settings({"scheduler": "slurm", "slurm": {"queue": "long"}})
