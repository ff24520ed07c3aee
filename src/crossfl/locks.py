"""Locks that hold on the filesystems HPC users have: local disks, NFS homes, Lustre projects.

A lock is a regular file opened for writing and locked with ``flock`` (``filelock.FileLock``),
never a directory or a read-only descriptor: on NFS, Linux emulates ``flock`` on a file with a
POSIX lock held by the server, and an exclusive POSIX lock needs a descriptor open for writing
(a read-only one gets EBADF); a directory's ``flock`` is not sent to the server at all (NFS
directories have no lock operation: fs/nfs/dir.c), so it excludes only processes on the same
host. On Lustre mounted without ``flock``, the call fails with ENOSYS;
the lock is then ``filelock.SoftFileLock`` at ``NAME.soft``: an exclusive-create file that
names its holder (PID, host, process start time) and is taken over only once that process
is provably gone (same host, PID dead or reused). (Not filelock's own automatic fallback: its
switch removes the file it had opened, which can be a peer's fresh marker, so two processes
racing their first lock could both get it.) A kernel lock ends with its process, so a
``kill -9`` leaves nothing to take over. The ``flock`` lock files stay in place after release:
removing one while another process waits on it would split the waiters across two files.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from crossfl.errors import UserError

DIR_LOCK = ".crossfl.lock"  # beside the directories that atomic.replace_dir swaps
DIR_LOCK_WAIT_S = 600.0  # how long a swap waits for another one before it says so
SOFT_TRY_S = 1.0


def take(path: Path, timeout: float) -> filelock.BaseFileLock:
    """The lock ``path``, taken: waiting up to ``timeout`` seconds (0: one try; -1: no limit),
    else ``filelock.Timeout``. The caller releases it."""
    blocking = timeout != 0
    native = filelock.FileLock(path, thread_local=False, fallback_to_soft=False)
    try:
        native.acquire(timeout=timeout, blocking=blocking)
        return native
    except filelock.Timeout:
        raise
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    soft = filelock.SoftFileLock(path.with_name(path.name + ".soft"), thread_local=False)
    # a try that finds a dead holder's file only removes it: "one try" is a short wait here
    soft.acquire(timeout=timeout if timeout != 0 else SOFT_TRY_S)
    return soft


@contextmanager
def dir_lock(directory: Path, timeout: float = DIR_LOCK_WAIT_S) -> Iterator[None]:
    """Exclusive among threads and processes, on any host that shares ``directory``."""
    path = directory / DIR_LOCK
    try:
        lock = take(path, timeout)
    except filelock.Timeout:
        raise UserError(
            f"another process has held {path} for {timeout:.0f} s",
            file=path,
            fix="let it finish; if no crossfl command uses this directory, remove the file",
        ) from None
    try:
        yield
    finally:
        lock.release()
