"""Where the chunk tasks of a prediction run: dask's threads, a dask.distributed cluster, or dask
workers started as SLURM jobs (dask-jobqueue), one slide spread over many nodes.

Apart from inference on purpose: ``predict.py`` builds one dask graph per image and hands it to a
``DaskRunner``; only this module knows schedulers, clusters and their lifetimes. The runner is a
context manager, and a SLURM cluster it starts is closed (its worker jobs cancelled) on success,
on an error and on Ctrl-C or SIGTERM alike, so no worker job outlives the predict job.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask

from unetflow.devices import pick_device
from unetflow.progress import DaskProgress, Progress
from unetflow.store import StoreError

if TYPE_CHECKING:
    from unetflow.predict import PredictOptions

log = logging.getLogger(__name__)

WORKER_JOB_NAME = "unetflow-dask"
"""SLURM job name of the worker jobs (what ``squeue -n`` finds)."""

FAILURE_CHECK_S = 1.0
"""How often a distributed run checks for a failed task and updates its progress."""

ProgressSource = Callable[[], tuple[int, int]]
"""Returns (done, total) units of work of a running computation, e.g. chunks written."""


def package_root() -> Path:
    """The folder ``import unetflow`` resolved from here: put first on the workers' PYTHONPATH, so
    the workers run this very code even when the submitting process uses a checkout, not an install."""
    return Path(__file__).resolve().parent.parent


def start_slurm_cluster(settings: dict[str, Any]) -> Any:
    """A dask-jobqueue ``SLURMCluster`` of the ``predict.slurm`` settings, no jobs submitted yet.

    One worker process per job (it loads the model once) with ``cores`` threads. Workers run the
    submitting job's interpreter (``sys.executable``: the same venv or conda env) and get the
    submitting environment (sbatch's default ``--export=ALL``) plus this package on PYTHONPATH.
    """
    # dask-jobqueue replaces the SIGINT handler when first imported (so only the main thread can
    # import it); put Python's back, so Ctrl-C stays a KeyboardInterrupt after the cluster is gone.
    ctrl_c = signal.getsignal(signal.SIGINT)
    from dask_jobqueue import SLURMCluster

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, ctrl_c)
    directives = list(settings["extra"])
    if settings["gpus"] > 0:
        directives.append(f"--gpus={settings['gpus']}")
    log_directory = settings["log_directory"]
    Path(log_directory).mkdir(parents=True, exist_ok=True)
    return SLURMCluster(
        queue=settings["partition"],
        account=settings["account"],
        cores=settings["cores"],
        processes=1,
        memory=settings["memory"],
        walltime=settings["walltime"],
        job_name=WORKER_JOB_NAME,
        job_extra_directives=directives,
        job_script_prologue=[f"export PYTHONPATH={shlex.quote(str(package_root()))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        python=sys.executable,
        interface=settings["interface"],
        log_directory=str(log_directory),
        scheduler_options={"dashboard_address": ":0"},  # a free port: several predict jobs may share a node
    )


def worker_jobs_for(n_tasks: int, settings: dict[str, Any]) -> tuple[int, int]:
    """(minimum, maximum) worker jobs for ``n_tasks`` parallel tasks: never more jobs than the
    tasks can keep busy (``cores`` tasks each), within ``min_jobs`` .. ``jobs``."""
    useful = max(1, math.ceil(n_tasks / settings["cores"]))
    maximum = min(settings["jobs"], useful)
    return min(settings["min_jobs"], maximum), maximum


def missing_paths(paths: Sequence[str]) -> tuple[str, list[str]]:
    """Run on a worker: its host name and which of ``paths`` it cannot see."""
    return socket.gethostname(), [path for path in paths if not os.path.exists(path)]


def resolved_device(requested: str) -> str:
    """Run on a worker: the device ``requested`` means there (``auto`` finds the worker's GPU)."""
    return str(pick_device(requested))


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM (Snakemake stopping a job, ``scancel`` of the predict job) into SystemExit
    while a cluster is open, so the ``with`` blocks close it; Python's default would just die."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DaskRunner:
    """Runs lists of ``dask.delayed`` tasks on the configured scheduler, with progress in the log.

    ``threads`` (default) uses dask's threaded scheduler with ``chunks_in_flight`` threads;
    ``distributed`` connects to ``address`` or starts a ``LocalCluster`` of ``n_workers``
    processes with ``threads_per_worker`` threads each; ``slurm`` starts dask-jobqueue worker jobs
    from ``predict.slurm`` and scales them to the work of each computation. Use as a context
    manager so a started cluster is shut down.
    """

    def __init__(self, options: PredictOptions) -> None:
        self.options = options
        self.client: Any = None
        self._cluster: Any = None
        self._stack = contextlib.ExitStack()

    def forward_threads(self, local_threads: int) -> int:
        """torch threads of each model forward a chunk task runs (``TilePredictor``: CPU forwards
        of the chunks in flight run side by side). The threaded scheduler's ``chunks_in_flight``
        threads share this process's ``local_threads``; a dask worker runs a task per thread, each
        forward on one core of it."""
        if self.options.scheduler == "threads":
            return max(1, local_threads // self.options.chunks_in_flight)
        return 1

    @property
    def remote(self) -> bool:
        """Whether tasks may run on other machines (which may not see our paths or devices)."""
        return self.options.scheduler == "slurm" or (
            self.options.scheduler == "distributed" and self.options.address is not None
        )

    def __enter__(self) -> DaskRunner:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        if self.options.scheduler == "threads":
            return
        from distributed import Client, LocalCluster

        if self.options.scheduler == "slurm":
            self._stack.enter_context(_sigterm_as_exit())
            self._cluster = start_slurm_cluster(self.options.slurm)
            slurm = self.options.slurm
            # Idle until tasks arrive: min_jobs start now (prepare waits for one), more on load.
            self._cluster.adapt(minimum_jobs=slurm["min_jobs"], maximum_jobs=max(slurm["jobs"], slurm["min_jobs"]))
            log.info("dask worker jobs as submitted:\n%s", self._cluster.job_script())
            self.client = Client(self._cluster, set_as_default=False)
        elif self.options.address:
            self.client = Client(self.options.address, set_as_default=False)
        else:
            self._cluster = LocalCluster(
                n_workers=self.options.n_workers,
                threads_per_worker=self.options.threads_per_worker,
                processes=True,
                dashboard_address=None,
            )
            self.client = Client(self._cluster, set_as_default=False)
        log.info("dask.distributed scheduler at %s", self.client.scheduler.address)

    def _scale(self, n_tasks: int) -> None:
        """Adaptive scaling of the worker jobs to ``n_tasks`` parallel tasks (``worker_jobs_for``)."""
        minimum, maximum = worker_jobs_for(n_tasks, self.options.slurm)
        self._cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.client is not None:
                self.client.close()
            if self._cluster is not None:
                self._cluster.close()  # dask-jobqueue cancels its worker jobs here
        finally:
            self.client = self._cluster = None
            self._stack.close()

    def prepare(self, paths: Sequence[str | Path], device: str) -> str:
        """Check that the workers see ``paths``; the device string the tasks should load the model on.

        Local schedulers share this process's files and devices. Remote workers are asked (one
        worker must be up, so this waits for the first SLURM job to start): a path missing on any
        worker is a StoreError naming it and the hosts, and ``auto`` is resolved by a worker,
        which may have the GPU that the submitting job lacks.
        """
        if not self.remote:
            return str(pick_device(device))
        self.client.wait_for_workers(1)
        wanted = [str(Path(path).resolve()) for path in paths]
        blind: dict[str, list[str]] = {}
        for host, missing in self.client.run(missing_paths, wanted).values():
            for path in missing:
                blind.setdefault(path, []).append(host)
        if blind:
            path, hosts = next(iter(blind.items()))
            raise StoreError(
                f"{path}: not visible to the dask workers on {', '.join(sorted(set(hosts)))}; slide, model and"
                " output must be on a file system that every node mounts at the same path (not /tmp or a"
                " node-local disk)"
            )
        return self.client.submit(resolved_device, device, pure=False).result()

    def __call__(self, tasks: Sequence[Any], label: str, progress: ProgressSource | None = None, width: int = 0) -> list[Any]:
        """Compute ``tasks`` (``dask.delayed`` objects) and return their results in order.

        Progress (``unetflow.progress``: a bar on a terminal, a line every ``progress_s`` seconds
        in a log file) counts the graph's tasks on the threaded scheduler, and ``progress``'s
        (done, total) units on a distributed one, whose tasks run elsewhere; ``width`` is how
        many tasks can run in parallel (the chunks), which a SLURM cluster scales to.
        """
        if not tasks:
            return []
        log.info("%s", label)
        if self.client is None:
            with Progress(label, 0, "tasks", every_s=self.options.progress_s) as shown, DaskProgress(shown):
                return list(dask.compute(*tasks, scheduler="threads", num_workers=self.options.chunks_in_flight))
        if self.options.scheduler == "slurm" and width > 0:
            self._scale(width)
        futures = self.client.compute(list(tasks))
        self._wait_showing(futures, label, progress)
        return self.client.gather(futures)

    def _wait_showing(self, futures: list[Any], label: str, progress: ProgressSource | None) -> None:
        """Wait for ``futures`` or the first failed one (the rest would run on for nothing),
        showing done/total and the workers alive whenever the progress is due (every
        ``FAILURE_CHECK_S`` on a terminal, every ``progress_s`` in a log file) and at the end."""
        from distributed import wait

        unit = "chunks" if progress else "tasks"
        with Progress(label, len(futures), unit, every_s=self.options.progress_s) as shown:
            while True:
                try:
                    with self.client.as_current():  # ``wait`` finds its client there, not as a global default
                        wait(futures, timeout=FAILURE_CHECK_S)
                    finished = True
                except TimeoutError:
                    finished = any(future.status == "error" for future in futures)
                if finished or shown.due():
                    done, total = progress() if progress else (sum(f.done() for f in futures), len(futures))
                    shown.set(done, total, note=f"{len(self.client.nthreads())} workers alive")
                if finished:
                    return


@contextlib.contextmanager
def own_runner(options: PredictOptions, runner: DaskRunner | None) -> Iterator[DaskRunner]:
    """The caller's runner (e.g. one cluster for all images of a store), or a new one."""
    if runner is not None:
        yield runner
        return
    with DaskRunner(options) as own:
        yield own
