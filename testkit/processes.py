"""The processes a run started, found without trusting what the run recorded.

A `crossfl run` started by a test gets a session of its own (``start_new_session``): every
process it starts stays in that session (the engine's worker pool makes a process group of its
own, not a session), whoever its parent is now. A mark in the environment finds the rest (the
watchdog, which takes a session of its own); the interchange rewrites its environment with its
process title, so only the session finds it.
"""

from __future__ import annotations

import os
import uuid

import psutil

MARK = "CROSSFL_TEST_MARK"


def marked_env(mark: str | None = None) -> tuple[str, dict[str, str]]:
    """A fresh mark and the environment that carries it (wide output: no wrapped lines)."""
    mark = mark or uuid.uuid4().hex
    return mark, dict(os.environ, **{MARK: mark}, COLUMNS="250")


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def started(mark: str, session: int | None = None) -> list[psutil.Process]:
    """Live (not zombie) processes in ``session`` or carrying ``mark``, this one excepted."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (session is not None and _sid(proc.pid) == session) or proc.environ().get(
                MARK
            ) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def interchanges() -> list[psutil.Process]:
    """This process's live engine interchanges (its children, when it runs the server)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "interchange" in " ".join(
                child.cmdline()
            ):
                out.append(child)
        except psutil.Error:
            continue
    return out


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a recycled pid is not the same process)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(f"{p.pid} (gone)")
    return out


def end(procs: list[psutil.Process]) -> None:
    """Leave nothing of a failed test behind."""
    for p in alive(procs):
        try:
            p.kill()
        except psutil.Error:
            continue
