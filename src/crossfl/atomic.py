"""Atomic writes: a reader sees the old file (or directory) or the new one, never half of one,
and after a crash (power loss, the node going down) the new one if the call returned: the data
is fsynced before the rename, and the directory after it.

What is written first goes to a hidden ``.NAME.*.tmp`` beside its target. A writer killed
before its rename leaves that behind: the next write of the same file removes the ones whose
writer (recorded in the name: host and PID) is gone, and ``sweep_tmp`` clears a whole tree
that one process owns (a run directory under its run lock)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from crossfl.locks import dir_lock


def fsync_dir(directory: Path) -> None:
    """Make the renames and creations in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # a filesystem that cannot fsync a directory has nothing more to give
        pass
    finally:
        os.close(fd)


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"
_OWNED = re.compile(r"\.~(?P<host>[A-Za-z0-9-]+)~(?P<pid>\d+)~")


def _owner_tag() -> str:
    return f".~{_HOST}~{os.getpid()}~"


def _writer_gone(name: str) -> bool:
    """The temporary file ``name`` was left by a process of this host that no longer runs."""
    m = _OWNED.search(name)
    if m is None or m["host"] != _HOST:
        return False
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _clean_stale(parent: Path, name: str) -> None:
    """Remove what writers of ``parent/name`` that are gone left behind."""
    for stale in parent.glob(f".{glob.escape(name)}.~*.tmp"):
        if _writer_gone(stale.name):
            with suppress(OSError):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()


def sweep_tmp(root: Path) -> list[Path]:
    """Remove every temporary file and directory this module left under ``root`` (call it only
    where one process owns the tree); what was removed."""
    removed = []
    for tmp in sorted(root.rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True):
        with suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def stage_file(path: Path, chunks: Iterable[bytes], mode: int | None = None) -> Path:
    """A hidden temporary file beside ``path`` holding ``chunks``, flushed and fsynced, for
    the caller to move into place (nothing is left behind when writing it fails). `mode`
    None: as a file the user creates (0666 less the umask); 0o600 for a secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_owner_tag()}", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask() if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """`mode` None: as a file the user creates (0666 less the umask); 0o600 for a secret."""
    tmp = stage_file(path, [data], mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> Path:
    return atomic_write_bytes(path, text.encode(), mode)


def write_jsonl_files(files: dict[Path, Iterable[str]], mode: int | None = None) -> list[Path]:
    """Whole JSONL files (one JSON text per item, no newline inside), written as one step:
    every file is staged first (``stage_file``) and moved into place, in the given order,
    only once all are written. If any write fails, the staged files are removed and the
    existing files stay as they were."""
    staged: dict[Path, Path] = {}
    try:
        for target, lines in files.items():
            staged[target] = stage_file(target, (f"{line}\n".encode() for line in lines), mode)
    except BaseException:
        for temp in staged.values():
            temp.unlink(missing_ok=True)
        raise
    for target, temp in staged.items():
        os.replace(temp, target)
    for parent in dict.fromkeys(target.parent for target in staged):
        fsync_dir(parent)
    return list(staged)


def append_jsonl(path: Path, line: str) -> None:
    """Append one JSON text as a whole line: one write, flushed and fsynced, so a reader
    (or a crash) sees all of it or none. A last line a killed writer cut short is ended
    first, so it cannot swallow this one (readers pass the cut line over)."""
    data = f"{line}\n".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        while data:  # one write for a regular file; the loop only if it is cut short
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, target: Path) -> Path:
    """Put the finished directory `new` (beside `target`) at `target`; the previous one is
    moved aside, then removed. Swaps into one parent directory take turns (a lock on the
    parent: ``locks.dir_lock``, which holds on NFS and Lustre too), so racing writers each
    leave nothing behind and the last one stands; what a killed swap left aside is removed by
    the next one."""
    parent = target.parent
    with dir_lock(parent):
        for stale in parent.glob(f".{glob.escape(target.name)}.old.*"):
            shutil.rmtree(stale, ignore_errors=True)
        _clean_stale(parent, target.name)  # what a killed new_dir was filling
        aside: Path | None = None
        if target.exists() or target.is_symlink():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", suffix=".tmp", dir=parent))
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
        fsync_dir(parent)
    return target


@contextmanager
def new_dir(target: Path) -> Iterator[Path]:
    """A fresh temporary directory beside `target` to fill; swapped in at `target` when the
    block ends, removed when it raises (the previous `target` stays)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{target.name}{_owner_tag()}", suffix=".tmp", dir=target.parent)
    )
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 is not what the user asked for
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
