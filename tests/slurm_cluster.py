"""A throwaway single-node SLURM cluster on localhost, for the tests that submit real jobs.

Why a real cluster: the SLURM profile's option names, resource mapping (``mem_mb`` -> ``--mem``,
``gpu`` -> ``--gpus``, ``cpus_per_task``) and status polling only fail against a real
``slurmctld``; mocks would agree with whatever the profile says. Debian's packages give the
daemons in seconds, so the test installs them when missing (root + apt-get only).

Layout: every daemon runs in the foreground as a child of this process (so its PID is exact and
teardown kills only what was started here) with state, spool, logs, PID files, a munge key and
the munge socket under one temporary directory, on free ports (a system SLURM or munged on the
default ports is never touched). The configuration itself must be ``/etc/slurm/slurm.conf``:
the executor plugin's nested ``srun`` drops ``SLURM_CONF`` from its environment, so only the
compiled-in default path is found inside a job. A file already there is put back at teardown.

The node has the machine's real CPUs and memory (``slurmd -C``) plus one *fake* GPU
(a gres bound to ``/dev/null``): SLURM then schedules ``--gpus=1`` requests exactly as on a GPU
node, so the profile's GPU rules are exercised; CUDA itself stays absent and torch falls back to
the CPU. No accounting (like many small clusters): ``sacct`` fails, which is why the profile polls
job states with ``squeue``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo", "scancel", "munged")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MARKER = "# written by unetflow tests/slurm_cluster.py; restored/removed when the test cluster stops"
PARTITION = "unetflow"
START_TIMEOUT_S = 60


class SlurmUnavailable(RuntimeError):
    """SLURM is not installed and cannot be installed here (the caller skips with this reason)."""


def ensure_installed() -> None:
    """Install Debian's SLURM and munge packages if any of their commands is missing.

    Raises ``SlurmUnavailable`` only when apt cannot be used at all (no apt-get, not root);
    a failing apt-get is a real error and propagates with its output.
    """
    if all(shutil.which(command) for command in COMMANDS):
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM is not installed and apt-get is unavailable to install {' '.join(PACKAGES)}")
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM is not installed and installing {' '.join(PACKAGES)} with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            output = done.stdout[-2000:] + done.stderr[-2000:]
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{output}")
    missing = [command for command in COMMANDS if shutil.which(command) is None]
    if missing:
        raise RuntimeError(f"installed {' '.join(PACKAGES)} but still missing: {' '.join(missing)}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_hardware() -> str:
    """``CPUs=.. Boards=.. ... RealMemory=..`` as slurmd itself detects them (so the node is never drained)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = out.splitlines()[0]
    return " ".join(word for word in line.split() if not word.startswith(("NodeName=", "UpTime=")))


def _hardware_value(hardware: str, key: str) -> int:
    match = re.search(rf"\b{key}=(\d+)", hardware)
    if match is None:
        raise RuntimeError(f"`slurmd -C` reported no {key}: {hardware}")
    return int(match.group(1))


@dataclass
class SlurmCluster:
    """Start with ``start()``, stop with ``stop()`` (or use as a context manager)."""

    partition: str = PARTITION
    root: Path = field(init=False)
    cpus: int = field(init=False, default=0)
    memory_mb: int = field(init=False, default=0)
    _processes: list[subprocess.Popen] = field(init=False, default_factory=list)
    _saved: dict[Path, bytes | None] = field(init=False, default_factory=dict)

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        # A short path: the munge socket path must fit a sockaddr_un (108 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="unetflow-slurm-"))
        self.root.chmod(0o755)  # munged wants its socket's directory searchable by all users
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        for name in ("state", "spool"):
            (self.root / name).mkdir()
        self._prepare_munge_key()
        host = socket.gethostname().split(".")[0]
        hardware = _node_hardware()
        self.cpus = _hardware_value(hardware, "CPUs")
        self.memory_mb = _hardware_value(hardware, "RealMemory")
        self._write_config(SLURM_CONF, self._slurm_conf(host, hardware))
        self._write_config(GRES_CONF, f"{MARKER}\nNodeName={host} Name=gpu Count=1 File=/dev/null\n")
        self._spawn(
            "munged",
            [
                "munged", "--foreground",
                f"--key-file={self.root / 'munge.key'}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ],
        )  # fmt: skip
        self._wait(lambda: self.munge_socket.exists(), "munged to create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-c"])
        self._wait(lambda: self._sinfo_states() is not None, "slurmctld to answer sinfo")
        self._spawn("slurmd", ["slurmd", "-D", "-N", host])
        self._wait(lambda: self._sinfo_states() == {"idle"}, f"node {host} to become idle")

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge.socket"

    def _prepare_munge_key(self) -> None:
        """The system key (created if missing), copied root-owned: munged running as root rejects munge-owned keys."""
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            MUNGE_KEY.write_bytes(os.urandom(128))
            MUNGE_KEY.chmod(0o600)
        key = self.root / "munge.key"
        key.write_bytes(MUNGE_KEY.read_bytes())
        key.chmod(0o600)

    def _slurm_conf(self, host: str, hardware: str) -> str:
        root = self.root
        return f"""{MARKER}
ClusterName=unetflowtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
NodeName={host} NodeAddr=127.0.0.1 {hardware} Gres=gpu:1 State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""

    def _write_config(self, path: Path, text: str) -> None:
        if path not in self._saved:
            # A file of ours left by a killed test run is not worth restoring.
            old = path.read_bytes() if path.exists() else None
            self._saved[path] = None if old is None or old.startswith(MARKER.encode()) else old
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _spawn(self, name: str, command: list[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")
        try:
            self._processes.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
        finally:
            out.close()

    def _sinfo_states(self) -> set[str] | None:
        done = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
        return set(done.stdout.split()) if done.returncode == 0 else None

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            dead = [p for p in self._processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                problem = f"{dead[0].args[0]} exited with {dead[0].returncode}" if dead else "timed out"
                raise RuntimeError(f"test SLURM cluster: waiting for {what}: {problem}\n{self.logs()}")
            time.sleep(0.2)

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers (finished ones for MinJobAge), as scontrol's fields."""
        command = ["scontrol", "show", "job", "--oneliner"]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in out.splitlines() if line.startswith("JobId=")]

    def logs(self, tail: int = 20) -> str:
        """The last lines of every daemon log, for failure messages."""
        parts = []
        for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons started here (newest first, by PID), restore configs."""
        if self._processes and self._processes[-1].args[0] == "slurmd":
            subprocess.run(["scancel", "--partition", self.partition], capture_output=True)
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._processes.clear()
        for path, content in self._saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        self._saved.clear()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":  # manual check: start, show the node, stop
    ensure_installed()
    with SlurmCluster() as cluster:
        print(subprocess.run(["sinfo", "-N", "-o", "%N %t %c %m %G"], capture_output=True, text=True).stdout)
