"""Atomic writes: a reader sees the old file (or directory) or the new one, never half of one."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """`mode` None: as a file the user creates (0666 less the umask); 0o600 for a secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode(), mode)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on a directory: threads and processes take turns."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def replace_dir(new: Path, target: Path) -> Path:
    """Put the finished directory `new` (beside `target`) at `target`; the previous one is
    moved aside, then removed. Swaps into one parent directory take turns (a lock on the
    parent), so racing writers each leave nothing behind and the last one stands; what a
    killed swap left aside is removed by the next one."""
    parent = target.parent
    with _locked(parent):
        for stale in parent.glob(f".{target.name}.old.*"):
            shutil.rmtree(stale, ignore_errors=True)
        aside: Path | None = None
        if target.exists() or target.is_symlink():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=parent))
            os.rename(target, aside / target.name)
        try:
            os.rename(new, target)
        except BaseException:
            if aside is not None:
                os.rename(aside / target.name, target)
            raise
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
    return target


@contextmanager
def new_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside `target` to fill; swapped in at `target` when the
    block ends, removed when it raises (the previous `target` stays)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 is not what the user asked for
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
