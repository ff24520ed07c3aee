"""A throwaway one-node Slurm cluster for tests: munged + slurmctld + slurmd, all state in one
temporary directory, on free ports, with fake GPUs (character devices registered as gres).

Two shapes: the default advertises 8 CPUs (more than this machine has: `config_overrides`) and
binds no task to CPUs (`task/none`), so every GPU is as close to every task as any other;
`bind_tasks=True` advertises the machine's real CPUs, binds each task to its CPUs
(`task/affinity`) and gives GPU i the cores of its share (gres.conf `Cores=`), as a facility's
node diagram does, so `srun --gpu-bind=closest` means what it means there.

Needs root and Debian's slurm-wlm + munge; `SlurmCluster.unavailable()` says why not otherwise.
Clients reach it through `SLURM_CONF` (see `env()`); nothing outside the directory is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
N_GPUS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(
        self,
        root: Path,
        *,
        cpus: int = 8,
        partition: str = "debug",
        gpus: int = N_GPUS,
        bind_tasks: bool = False,
    ) -> None:
        self.root = Path(root)
        self.bind_tasks = bind_tasks
        # bound tasks need the CPUs that exist (task/affinity lays tasks out on them)
        self.cpus = len(os.sched_getaffinity(0)) if bind_tasks else cpus
        self.gpus = min(gpus, self.cpus) if bind_tasks else gpus
        self.partition = partition
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._procs: list[tuple[str, Path]] = []  # (name, pid file)

    @staticmethod
    def unavailable() -> str | None:
        """Why a cluster cannot start here, or None."""
        if os.geteuid() != 0:
            return "the local Slurm cluster needs root (slurmd runs jobs as their user)"
        missing = [b for b in BINARIES if shutil.which(b) is None]
        if missing:
            return (
                f"Slurm/munge binaries missing: {', '.join(missing)} "
                "(apt-get install slurm-wlm munge)"
            )
        return None

    # -----------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> None:
        for d in ("munge", "state", "spool", "log", "dev"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        self._start_munge()
        self._write_config()
        self._run_daemon(
            "slurmctld", ["slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid"
        )
        self._run_daemon(
            "slurmd", ["slurmd", "-f", str(self.conf), "-N", "localhost"], self.root / "slurmd.pid"
        )
        self._wait_idle(timeout)

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self._run_daemon(
            "munged",
            [
                "munged",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
            self.root / "munge" / "munged.pid",
        )

    def _write_config(self) -> None:
        gpus = []
        for i in range(self.gpus):
            dev = self.root / "dev" / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # like /dev/null
            gpus.append(str(dev))
        r = self.root
        task_plugin = "task/affinity" if self.bind_tasks else "task/none"
        overrides = "" if self.bind_tasks else "SlurmdParameters=config_overrides\n"
        self.conf.write_text(f"""\
ClusterName=crossfltest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin={task_plugin}
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
{overrides}StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "slurmctld.pid"}
SlurmdPidFile={r / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
MinJobAge=600
NodeName=localhost CPUs={self.cpus} RealMemory=2000 Gres=gpu:{self.gpus} Features=gpu State=UNKNOWN
PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
        (r / "gres.conf").write_text(
            "AutoDetect=off\n"
            + "".join(
                f"NodeName=localhost Name=gpu File={g}{self._cores(i)}\n"
                for i, g in enumerate(gpus)
            )
        )

    def _cores(self, gpu: int) -> str:
        """` Cores=...`: GPU i's share of the CPUs (bind_tasks only), as a node diagram pairs them."""
        if not self.bind_tasks:
            return ""
        per = self.cpus // self.gpus
        first = gpu * per
        return f" Cores={first}" if per == 1 else f" Cores={first}-{first + per - 1}"

    def _run_daemon(self, name: str, argv: list[str], pidfile: Path) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{name} failed to start: {proc.stderr or proc.stdout}{self._log_tail(name)}"
            )
        self._procs.append((name, pidfile))
        deadline = time.monotonic() + 15
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _log_tail(self, name: str) -> str:
        log = self.root / "log" / f"{name}.log"
        if log.exists():
            return "\n" + "\n".join(log.read_text().splitlines()[-15:])
        return ""

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            p = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env()
            )
            state = p.stdout.strip() or p.stderr.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"node not idle after {timeout:.0f}s (state {state!r})"
            f"{self._log_tail('slurmctld')}{self._log_tail('slurmd')}"
        )

    # -----------------------------------------------------------------------------------------
    def sbatch(self, script: Path, *args: str, cwd: Path) -> str:
        p = subprocess.run(
            ["sbatch", "--parsable", str(script), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=30,
        )
        if p.returncode != 0:
            raise RuntimeError(f"sbatch {script.name}: {p.stderr.strip()}")
        return p.stdout.strip().split(";")[0]

    def wait(self, job_id: str, timeout: float = 120.0) -> tuple[str, str]:
        """Wait for a job to leave the queue; return (state, exit code) from scontrol."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job_info(job_id)
            state = info.get("JobState", "")
            if state and state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state, info.get("ExitCode", "")
            time.sleep(0.5)
        raise TimeoutError(
            f"job {job_id} still queued after {timeout:.0f}s: {self.job_info(job_id)}"
        )

    def job_info(self, job_id: str) -> dict[str, str]:
        p = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=30,
        )
        out: dict[str, str] = {}
        for word in p.stdout.split():
            k, sep, v = word.partition("=")
            if sep:
                out[k] = v
        return out

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env(), capture_output=True)
        for _name, pidfile in reversed(self._procs):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        self._procs.clear()
