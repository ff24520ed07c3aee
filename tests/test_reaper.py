"""crossfl.server.reaper: a dead run's processes are reaped (a recycled pid spared), and
the watchdog ends the engines when the server dies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def sleeper() -> subprocess.Popen[bytes]:
    """A process that runs until it is ended, in a session of its own (as a worker pool is)."""
    return subprocess.Popen(["sleep", "1000"], start_new_session=True)


def test_a_dead_runs_processes_are_reaped_and_a_recycled_pid_is_spared(tmp_path: Path) -> None:
    from crossfl.server import reaper

    server, engine, stranger = sleeper(), sleeper(), sleeper()
    try:
        server_ref = reaper.ProcessRef.of(server.pid, "server")
        engine_ref = reaper.ProcessRef.of(engine.pid, "workers", "east")
        stranger_ref = reaper.ProcessRef.of(stranger.pid, "workers", "west")
        assert server_ref and engine_ref and stranger_ref and engine_ref.find() is not None
        # the pid a record names, now held by a process that started later: not the same one
        recycled = stranger_ref.model_copy(update={"started": stranger_ref.started - 60})
        other_program = engine_ref.model_copy(update={"exe": "/usr/bin/python3"})
        assert recycled.find() is None and other_program.find() is None
        record = reaper.ProcessRecord(server=server_ref, engines=[engine_ref, recycled])
        record.save(tmp_path)
        assert reaper.reap(tmp_path) == 0 and engine.poll() is None  # its server lives: left alone
        server.kill()
        server.wait()
        assert reaper.reap_dead_runs(tmp_path.parent) == {tmp_path.name: 1}
        assert engine.wait(timeout=60) is not None  # ended (SIGTERM)
        assert stranger.poll() is None, "a recycled pid of another process was signalled"
        assert not (tmp_path / reaper.RECORD).exists()
    finally:
        for p in (server, engine, stranger):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_the_watchdog_ends_the_engines_when_the_server_dies(tmp_path: Path) -> None:
    from crossfl.server import reaper

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    engine = sleeper()
    try:
        server_ref = reaper.ProcessRef.of(server.pid, "server")
        engine_ref = reaper.ProcessRef.of(engine.pid, "interchange", "east")
        assert server_ref and engine_ref
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "crossfl.server.reaper", str(tmp_path), str(server.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # the record names the watchdog too (a later run ends a dead run's watchdog; this one
        # must not end itself before it has done its work)
        reaper.ProcessRecord(
            server=server_ref,
            watchdog=reaper.ProcessRef.of(watchdog.pid, "watchdog"),
            engines=[engine_ref],
        ).save(tmp_path)
        server.kill()  # kill -9: no shutdown of anything
        server.wait()
        out, _ = watchdog.communicate(timeout=120)
        assert watchdog.returncode == 0 and "ended 1 process" in out, out
        assert engine.wait(timeout=60) is not None
        assert not (tmp_path / reaper.RECORD).exists()
    finally:
        for p in (server, engine):
            p.kill()
            p.wait()
