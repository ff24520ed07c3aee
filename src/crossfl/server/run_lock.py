"""One process per run directory.

``crossfl run`` takes ``<run>/run.lock`` as it creates the directory and ``crossfl resume``
before it reads anything; both hold it until they exit. A second process is refused in one
line naming the holder (PID, host, command: ``<run>/run.owner.json``, written by the holder
once it has the lock). The lock is a ``crossfl.locks`` file lock, so it holds on NFS and
Lustre; a kernel lock ends with its process, so after ``kill -9`` the next resume simply
takes it (and says whose it was), and on a filesystem without ``flock`` filelock's fallback
takes a lock file over only once its holder is provably gone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import filelock
import psutil

from crossfl.atomic import atomic_write_text
from crossfl.errors import UserError
from crossfl.locks import take
from crossfl.schema import StrictModel

LOCK = "run.lock"
OWNER = "run.owner.json"


class Owner(StrictModel):
    pid: int
    host: str
    started: float  # the process's start time (psutil create_time): a reused PID differs
    command: str
    since: str

    @classmethod
    def me(cls) -> Owner:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=psutil.Process().create_time(),
            command=shlex.join(["crossfl", *sys.argv[1:]]),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    @classmethod
    def read(cls, run_dir: Path) -> Owner | None:
        try:
            return cls.model_validate_json((run_dir / OWNER).read_text())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool | None:
        """Whether this owner still runs (None: it is on another host, so this cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 0.01
        except psutil.Error:
            return False

    def describe(self) -> str:
        return f"process {self.pid} on {self.host} (`{self.command}`, since {self.since})"


class RunLock:
    """``with RunLock(run_dir) as lock:`` holds the run; ``lock.previous`` names a holder that
    had ended without releasing it (killed), for the caller to say so."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.previous: Owner | None = None
        self._lock: filelock.BaseFileLock | None = None

    def __enter__(self) -> RunLock:
        try:
            self._lock = take(self.run_dir / LOCK, timeout=0)
        except filelock.Timeout:
            owner = Owner.read(self.run_dir)
            who = owner.describe() if owner else "another process"
            stop = f"stop it with `kill -TERM {owner.pid}`" if owner else "let it end"
            raise UserError(
                f"run {self.run_dir.name} is in use by {who}",
                file=self.run_dir,
                fix=f"wait for it to end, or {stop}; then `crossfl resume {self.run_dir}`",
            ) from None
        try:
            before = Owner.read(self.run_dir)
            me = Owner.me()
            if before is not None and (before.pid, before.host) != (me.pid, me.host):
                self.previous = before
            atomic_write_text(self.run_dir / OWNER, me.model_dump_json(indent=2) + "\n")
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            (self.run_dir / OWNER).unlink()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
