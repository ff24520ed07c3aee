"""The engine processes of a run: recorded in its directory, ended with its server.

A local site's engine starts an interchange (a child of the server) and worker pools (started
through a shell that detaches them: their parent is gone at once). When the server dies
without shutting its engines down (`kill -9`, the node's OOM killer), nothing else ends them.
So a run records, in ``<run>/processes.json``, its server, its watchdog and every engine
process (pid, start time, command line), and:

- a watchdog (``python -m crossfl.server.reaper RUN_DIR``, in a session of its own) waits for
  the server to end and then ends what the record names, with all their descendants;
- the next `crossfl run` or `crossfl resume` reaps what any dead run left (its watchdog killed
  too, say).

A recorded pid counts only while the process that has it started when the record says and
runs the same program: a recycled pid of an unrelated process is never signalled. A run that
ends normally shuts its engines down, ends what is left of them, and removes its record.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
from pydantic import BaseModel, ConfigDict

from crossfl.atomic import atomic_write_text
from crossfl.schema import StrictModel

RECORD = "processes.json"
GRACE_S = 10.0  # SIGTERM first; what is still there after this gets SIGKILL


class ProcessRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int
    started: float  # when the process started (psutil's create_time)
    exe: str  # the program it runs (kept when it sets its title: the interchange does)
    cmdline: tuple[str, ...]  # for whoever reads the record
    role: str  # server | watchdog | interchange | workers
    site: str | None = None

    @classmethod
    def of(cls, pid: int, role: str, site: str | None = None) -> ProcessRef | None:
        try:
            proc = psutil.Process(pid)
            return cls(
                pid=pid,
                started=proc.create_time(),
                exe=proc.exe(),
                cmdline=tuple(proc.cmdline()),
                role=role,
                site=site,
            )
        except psutil.Error:
            return None

    def find(self) -> psutil.Process | None:
        """The live process this refers to; None when it ended, or when its pid now names
        another process (one that started at another time, or runs another program)."""
        try:
            proc = psutil.Process(self.pid)
            same = abs(proc.create_time() - self.started) < 0.01 and proc.exe() == self.exe
            return proc if same and proc.status() != psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return None


class ProcessRecord(StrictModel):
    server: ProcessRef
    watchdog: ProcessRef | None = None
    engines: list[ProcessRef] = []

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / RECORD, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> ProcessRecord | None:
        try:
            return cls.model_validate_json((run_dir / RECORD).read_text())
        except (OSError, ValueError):
            return None


def end_processes(procs: list[psutil.Process], grace_s: float = GRACE_S) -> None:
    """End ``procs`` and all their descendants: SIGTERM, then SIGKILL for what outlives the
    grace period. Returns once every one of them is gone."""
    family: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            family.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
        except psutil.Error:
            continue
    members = list(family.values())
    for sig in ("terminate", "kill"):
        for proc in members:
            try:
                getattr(proc, sig)()
            except psutil.Error:
                continue
        _, members = psutil.wait_procs(members, timeout=grace_s)
        if not members:
            return


def end_recorded(record: ProcessRecord, grace_s: float = GRACE_S) -> int:
    """End the engine processes of ``record`` that still run; how many there were."""
    live = [p for p in (ref.find() for ref in record.engines) if p is not None]
    end_processes(live, grace_s)
    return len(live)


def reap(run_dir: Path) -> int:
    """End what the run in ``run_dir`` left running, if its server is gone; how many processes
    (not counting descendants) were ended. A live run is left alone."""
    record = ProcessRecord.load(run_dir)
    if record is None or record.server.find() is not None:
        return 0
    count = end_recorded(record)
    dog = record.watchdog.find() if record.watchdog is not None else None
    if dog is not None and dog.pid != os.getpid():  # the watchdog itself reaps its run last
        end_processes([dog])
    (run_dir / RECORD).unlink(missing_ok=True)
    return count


def reap_dead_runs(runs_root: Path) -> dict[str, int]:
    """Reap every run under ``runs_root`` whose server is gone; {run name: processes ended}."""
    reaped = {}
    for record in sorted(runs_root.glob(f"*/{RECORD}")):
        count = reap(record.parent)
        if count:
            reaped[record.parent.name] = count
    return reaped


def start_watchdog(run_dir: Path) -> subprocess.Popen[bytes]:
    """The watchdog of this process's run, in a session of its own (a signal to the server's
    process group must not end it before it has done its work)."""
    log = run_dir / "engines" / "watchdog.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "crossfl.server.reaper", str(run_dir), str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )


def watch(run_dir: Path, server_pid: int) -> None:
    """Wait for the server to end, then reap its run (nothing, when it ended normally: it
    removed its record)."""
    try:
        psutil.Process(server_pid).wait()
    except psutil.NoSuchProcess:
        pass
    record = ProcessRecord.load(run_dir)
    if record is not None and record.server.pid == server_pid:
        count = reap(run_dir)
        if count:
            print(
                f"server {server_pid} ended without shutting its engines down; ended {count} process(es)",
                flush=True,
            )


if __name__ == "__main__":
    watch(Path(sys.argv[1]), int(sys.argv[2]))
