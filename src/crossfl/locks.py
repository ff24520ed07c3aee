"""Locks that hold on the filesystems HPC users have: local disks, NFS homes, Lustre projects.

A lock is a file opened for writing and locked with ``flock`` (``filelock.FileLock``), never
a read-only descriptor: on NFS, Linux emulates ``flock`` with a POSIX lock over the whole file,
and an exclusive POSIX lock needs a descriptor open for writing (a read-only one, such as a
directory's, gets EBADF). On Lustre mounted without ``flock``, the call fails with ENOSYS;
filelock then falls back to an exclusive-create lock file that names its holder (PID, host,
process start time) and is taken over only once that process is provably gone (same host, PID
dead or reused). A kernel lock ends with its process, so a ``kill -9`` leaves nothing to
take over. Lock files stay in place after release: removing one while another process waits
on it would split the waiters across two files.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from crossfl.errors import UserError

DIR_LOCK = ".crossfl.lock"  # beside the directories that atomic.replace_dir swaps
DIR_LOCK_WAIT_S = 600.0  # how long a swap waits for another one before it says so


def file_lock(path: Path) -> filelock.BaseFileLock:
    """The lock of ``path`` (created when first taken), held by the object that takes it."""
    return filelock.FileLock(path, thread_local=False)


def acquire(lock: filelock.BaseFileLock, timeout: float) -> None:
    """Take ``lock``, waiting up to ``timeout`` seconds (0: one try; -1: no limit); raises
    ``filelock.Timeout``. The fallback on a filesystem without flock is the intended one, so
    filelock's warning about it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flock not supported", category=UserWarning)
        lock.acquire(timeout=timeout, blocking=timeout != 0)


@contextmanager
def dir_lock(directory: Path, timeout: float = DIR_LOCK_WAIT_S) -> Iterator[None]:
    """Exclusive among threads and processes, on any host that shares ``directory``."""
    path = directory / DIR_LOCK
    lock = file_lock(path)
    try:
        acquire(lock, timeout)
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
