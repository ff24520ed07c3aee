"""Runs are never lost: locks that hold where flock needs a writable descriptor (NFS) or is
missing (Lustre without flock), the run lock (a second process refused by name, a killed
holder's lock taken over), checkpoint generations and rewinding to one, a full disk, directory
fsync and stale temporary files, and one retry layer for Globus HTTP calls (globus-sdk's,
against a real local HTTP server)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from crossfl import atomic
from crossfl.errors import UserError
from crossfl.locks import DIR_LOCK
from crossfl.server import checkpoint as ckpt
from crossfl.server.flat import FlatSpec
from crossfl.server.run_lock import LOCK, OWNER, RunLock

# ------------------------------------------------------------------ filesystems without flock

# How Linux answers flock on the filesystems of login nodes and project directories:
# - "nfs": flock is emulated with a POSIX lock over the whole file, so an exclusive lock needs
#   a descriptor open for writing; a read-only one (a directory's) gets EBADF;
# - "lustre": mounted without `flock`, the call fails with ENOSYS.
EMULATE = """
import errno, fcntl, os
_real = fcntl.flock
def _flock(fd, op, kind={kind!r}):
    if kind == "lustre":
        raise OSError(errno.ENOSYS, "Function not implemented")
    if kind == "nfs" and op & fcntl.LOCK_EX:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
    return _real(fd, op)
fcntl.flock = _flock
"""


@pytest.fixture(params=["local", "nfs", "lustre"])
def filesystem(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    kind: str = request.param
    if kind != "local":
        real = fcntl.flock
        exec(EMULATE.format(kind=kind), {})  # noqa: S102 - the emulation above, as children get it
        emulated, fcntl.flock = fcntl.flock, real
        monkeypatch.setattr(fcntl, "flock", emulated)
    return kind


def test_directory_swaps_take_turns_on_nfs_and_lustre(tmp_path: Path, filesystem: str) -> None:
    """Racing swaps into one directory (renders, model builds) still leave one good result
    where a read-only descriptor cannot be flocked (at 963bc67: EBADF on NFS, ENOSYS on
    Lustre)."""
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(3):
                with atomic.new_dir(tmp_path / "site") as tmp:
                    (tmp / "which").write_text(f"{i}-{j}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    left = sorted(p.name for p in tmp_path.iterdir())
    # the kernel lock's file stays (removing it would split waiters); the fallback's is removed
    assert left in (["site"], [DIR_LOCK, "site"]), left
    assert (tmp_path / "site" / "which").read_text().count("-") == 1


def holder(run_dir: Path, kind: str) -> subprocess.Popen[str]:
    """A process that takes the run lock (on the same emulated filesystem), says so, and
    then runs until it is killed."""
    code = (EMULATE.format(kind=kind) if kind != "local" else "") + (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from crossfl.server.run_lock import RunLock\n"
        "lock = RunLock(Path(sys.argv[1])).__enter__()\n"
        "print('held', flush=True)\n"
        "time.sleep(1000)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_one_process_per_run_and_a_killed_holder_is_taken_over(
    tmp_path: Path, filesystem: str
) -> None:
    run_dir = tmp_path / "runs" / "demo-20261207-000000"
    run_dir.mkdir(parents=True)
    proc = holder(run_dir, filesystem)
    try:
        with pytest.raises(UserError) as refused:
            RunLock(run_dir).__enter__()
        line = refused.value.render()
        assert f"in use by process {proc.pid} on " in line and "\n" not in line, line
        assert f"kill -TERM {proc.pid}" in line and f"crossfl resume {run_dir}" in line
        proc.send_signal(signal.SIGKILL)  # kill -9: nothing released
        proc.wait()
        assert json.loads((run_dir / OWNER).read_text())["pid"] == proc.pid
        with RunLock(run_dir) as lock:
            assert lock.previous is not None and lock.previous.pid == proc.pid
            assert json.loads((run_dir / OWNER).read_text())["pid"] == os.getpid()
            with pytest.raises(UserError, match=f"in use by process {os.getpid()} "):
                RunLock(run_dir).__enter__()  # another holder in this very process: refused too
        assert not (run_dir / OWNER).exists()
        with RunLock(run_dir) as again:  # released: taken at once, and nothing to take over
            assert again.previous is None
    finally:
        proc.kill()
        proc.wait()
    if filesystem == "local":
        assert (run_dir / LOCK).exists()  # a kernel lock's file stays


# ------------------------------------------------------------------ checkpoint generations


def checkpoint_of(rnd: int, finished: bool = False) -> tuple[ckpt.Checkpoint, bytes]:
    state = {"l.lora_A.weight": torch.full((2, 3), float(rnd))}
    spec = FlatSpec.from_state(state)
    c = ckpt.Checkpoint(
        round=rnd,
        version=rnd,
        updates=2 * rnd,
        elapsed_s=float(rnd),
        metrics_bytes=100 * rnd,
        strategy_name="fedavg",
        strategy_state={},
        global_flat=spec.flatten(state),
        spec=spec,
        finished=finished,
    )
    return c, b"x" * 1000


def test_checkpoint_generations_are_kept_and_a_run_rewinds_to_one(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint"
    for rnd in range(1, 6):
        ckpt.save(d, *checkpoint_of(rnd), keep=3)
    assert list(ckpt.generations(d)) == [3, 4, 5]
    assert ckpt.load_meta(d) == {
        "round": 5,
        "version": 5,
        "updates": 10,
        "elapsed_s": 5.0,
        "strategy": "fedavg",
        "finished": False,
        "generation": "round-00005",
    }
    assert (c := ckpt.load(d)) is not None and c.round == 5
    assert (old := ckpt.load(d, 3)) is not None and old.metrics_bytes == 300
    assert torch.equal(old.global_flat, torch.full((6,), 3.0))

    final = tmp_path / "final_adapter"
    final.mkdir()
    moved = ckpt.rewind(d, 4, aside=[final])
    assert moved is not None and sorted(p.name for p in moved.iterdir()) == [
        "final_adapter",
        "round-00005",
    ]
    assert not final.exists() and list(ckpt.generations(d)) == [3, 4]
    assert (c := ckpt.load(d)) is not None and c.round == 4 and not ckpt.is_finished(d)
    with pytest.raises(UserError, match=r"no checkpoint of round 1 is kept \(kept: 3, 4\)"):
        ckpt.rewind(d, 1, aside=[])

    # the pointer lost (or a generation written after it): the newest complete one counts
    (d / "state.json").unlink()
    ckpt.save(d, *checkpoint_of(5, finished=True), keep=3)
    assert ckpt.is_finished(d) and list(ckpt.generations(d)) == [3, 4, 5]
    (d / "state.json").unlink()
    assert (c := ckpt.load(d)) is not None and c.round == 5 and c.finished

    # a checkpoint directory as crossfl wrote it before generations: still resumable
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("state.pt", "state.json"):
        (legacy / name).write_bytes((d / "round-00003" / name).read_bytes())
    assert (c := ckpt.load(legacy)) is not None and c.round == 3


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` (root only; skipped elsewhere)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem is full; the filler file."""
    filler = directory / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return filler


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", "2m") as fs:
        d = fs / "checkpoint"
        ckpt.save(d, *checkpoint_of(1))
        filler = fill(fs)
        with pytest.raises(OSError) as full:
            ckpt.save(d, *checkpoint_of(2))
        assert full.value.errno == errno.ENOSPC
        assert (c := ckpt.load(d)) is not None and c.round == 1
        assert list(ckpt.generations(d)) == [1] and ckpt.load_meta(d)["round"] == 1
        assert not list(d.rglob("*.tmp")), "a failed generation left its temporary files"
        filler.unlink()
        ckpt.save(d, *checkpoint_of(2))
        assert (c := ckpt.load(d)) is not None and c.round == 2


# ------------------------------------------------------------------ atomic writes


def test_atomic_writes_fsync_the_directory_and_clear_stale_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.atomic_write_text(tmp_path / "a.json", "{}")
    assert synced == ["file", "dir"], "the rename is not durable until its directory is synced"
    synced.clear()
    with atomic.new_dir(tmp_path / "gen") as tmp:
        (tmp / "x").write_text("x")
    assert "dir" in synced
    monkeypatch.undo()

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    tag = atomic._owner_tag()
    dead = tmp_path / f".a.json{tag.replace(str(os.getpid()), str(gone.pid))}abc.tmp"
    live = tmp_path / f".a.json{tag}def.tmp"  # a writer still at work (this process)
    foreign = tmp_path / f".a.json.~otherhost~{gone.pid}~ghi.tmp"  # cannot tell: kept
    for p in (dead, live, foreign):
        p.write_text("half")
    atomic.atomic_write_text(tmp_path / "a.json", "{}")
    assert not dead.exists() and live.exists() and foreign.exists()

    nested = tmp_path / "run" / "checkpoint" / ".round-00002.~h~1~xyz.tmp"
    nested.mkdir(parents=True)
    (nested / "state.pt").write_text("half")
    (tmp_path / "run" / ".metrics.jsonl.abc.tmp").write_text("half")
    removed = atomic.sweep_tmp(tmp_path / "run")
    assert sorted(p.name for p in removed) == [".metrics.jsonl.abc.tmp", nested.name]
    assert not list((tmp_path / "run").rglob("*.tmp"))


# ------------------------------------------------------------------ one retry layer


class Always503(http.server.BaseHTTPRequestHandler):
    calls: list[str] = []

    def _answer(self) -> None:
        self.calls.append(f"{self.command} {self.path}")
        body = json.dumps({"code": "ServiceUnavailable", "message": "try later"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_a_failing_globus_call_is_retried_by_globus_sdk_alone() -> None:
    """A Transfer submission that keeps failing with 503: globus-sdk's own retries (1 + 5
    calls), and no second layer of the kit's on top (at 963bc67: 3 x 6 = 18 calls)."""
    import globus_sdk

    from crossfl.server.experiment import GlobusCollection
    from crossfl.server.faults import RetryPolicy, call_with_retry
    from crossfl.server.transport import GlobusMover

    Always503.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Always503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = globus_sdk.TransferClient(base_url=f"http://127.0.0.1:{server.server_port}/")
        client.retry_config.max_sleep = 0  # globus-sdk's backoff, without the waiting
        mover = GlobusMover(
            client, GlobusCollection(collection=str(uuid.uuid4()), path="/srv"), timeout_s=5
        )
        site = GlobusCollection(collection=str(uuid.uuid4()), path="/lus")
        send: Callable[[], str] = lambda: mover.send(site, "run/global-v1.safetensors", "x")  # noqa: E731
        with pytest.raises(globus_sdk.GlobusAPIError) as failed:
            call_with_retry(send, RetryPolicy(retries=2, backoff_s=0.0))
        assert failed.value.http_status == 503
        assert len(Always503.calls) == 1 + client.retry_config.max_retries == 6, Always503.calls
    finally:
        server.shutdown()


# ------------------------------------------------------------------ a warm pilot without its server


def test_a_warm_pilot_is_released_within_its_idle_limit_without_the_server() -> None:
    """`queue-aware` keeps a pilot idle only as long as a new one is expected to wait, under
    its walltime: the endpoint enforces that limit itself (the engine's max_idletime, the
    endpoint's idle_heartbeats_soft), so a server that died leaves it held no longer (at
    963bc67: the whole walltime)."""
    from crossfl.clock import REAL_CLOCK
    from crossfl.server.dispatch import make_policy
    from crossfl.server.experiment import Experiment

    exp = Experiment.model_validate(
        {
            "name": "warm",
            "model": {"path": "model"},
            "data": {"train": "t.jsonl", "validation": "v.jsonl"},
            "sites": [{"name": n, "site": "local"} for n in ("slow", "glacial", "quick")],
            "dispatch": {
                "name": "queue-aware",
                "expected_wait_s": {"slow": 900, "glacial": 30000, "quick": 60},
            },
        }
    )
    policy = make_policy(exp, REAL_CLOCK)
    assert policy.endpoint_options("slow", 7200.0) == {
        "max_idletime": 900.0,
        "idle_heartbeats_soft": 32,  # 30 s heartbeats, and two to spare
    }
    assert policy.endpoint_options("glacial", 7200.0)["max_idletime"] == 7200.0  # walltime
    assert policy.endpoint_options("quick", 7200.0) == {}  # not kept warm at all
