"""Clean ends and runs that are never lost, on the real engine: Ctrl-C (SIGINT to the whole
process group), SIGHUP and SIGTERM end a `crossfl run` the same way (exit 130, the resume
hint, no engine left, no traceback) and the resumed run ends bit for bit where an
uninterrupted one does; a concurrent resume is refused naming the holder; a run rewinds to a
kept checkpoint generation; an engine that does not answer its shutdown is ended; a full
disk ends the run in one line with the last checkpoint kept.

Every wait is for a state (a task held at a FIFO gate, a process gone) with a generous hard
limit that fails the test rather than hang it; nothing asserts how long anything took."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from safetensors.torch import load_file
from testkit.processes import end as end_all
from testkit.processes import interchanges, marked_env, started
from testkit.scratch_project import make_project

from crossfl.errors import UserError
from crossfl.server import checkpoint as ckpt
from crossfl.server import lifecycle
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import resume_run, run_experiment
from crossfl.server.run_lock import RunLock
from test_runs_durable import fill, small_filesystem
from test_server_runs import (
    PROBES,
    cli,
    cli_done,
    east_data,
    experiment_file,
    final_adapters_equal,
    gated_sites,
    records,
    run_dir_of,
)

pytestmark = pytest.mark.slow  # every test here runs a federation on the real engine

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 300  # far beyond what any of these takes on a busy machine: a hang fails, not waits


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("ends-project"), ROOT)


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    return project


@pytest.fixture(scope="module")
def straight(project: Path) -> Path:
    """The uninterrupted run every interrupted one must end equal to."""
    plain = project / "gated" / "plain-east.jsonl"
    plain.parent.mkdir(exist_ok=True)
    plain.write_bytes(east_data(project))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROSSFL_ROOT", str(project))
        exp, path = load_experiment(
            experiment_file(
                project,
                name="straight",
                sites=[
                    {"name": "east", "site": "local", "data_path": str(plain)},
                    {"name": "west", "site": "local"},
                ],
            )
        )
        return run_experiment(exp, path, Console(width=120))


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name
)
def test_a_signal_to_the_process_group_ends_the_run_and_it_resumes_bit_exact(
    here: Path, straight: Path, sig: signal.Signals
) -> None:
    """`setsid crossfl run ... &`, then `kill -SIG -- -PGID` after round 1, as a terminal's
    Ctrl-C (SIGINT) or hang-up, or a batch system, signals the whole group: the engines'
    processes are in groups of their own, so they neither print tracebacks nor die under
    the server; it shuts them down and exits 130 with the resume hint (at 963bc67 SIGINT
    left it waiting forever in the engine's shutdown). `crossfl resume` finishes the run."""
    name = f"group-{sig.name.lower()}"
    gate, sites = gated_sites(here, name)
    mark, env = marked_env()
    log = here / f"{name}.log"
    try:
        proc = cli(
            "run", str(experiment_file(here, name=name, sites=sites)), cwd=here, env=env, log=log
        )
        held = gate.wait_for_reader(alive=lambda: proc.poll() is None)  # east is in round 2
        run_dir = run_dir_of(here, name)
        if sig == signal.SIGINT:  # while it runs, a resume of it is refused, naming it
            second = cli_done("resume", str(run_dir), cwd=here, env=env)
            assert second.returncode == 2, second.stdout + second.stderr
            assert f"in use by process {proc.pid} " in second.stderr, second.stderr
            assert "Traceback" not in second.stdout + second.stderr
            assert not records(run_dir, "resume"), "the refused resume wrote into the run"
        os.killpg(proc.pid, sig)
        assert proc.wait(timeout=LIMIT_S) == 130, log.read_text()
        out = log.read_text()
        assert f"crossfl resume {run_dir}" in out and "checkpoint after round 1 of 3 kept" in out, (
            out
        )
        assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
        assert not started(mark, proc.pid), "a stopped run leaves no engine process"
        assert not (run_dir / "run.owner.json").exists()
        gate.release(held)
        resumed = cli_done("resume", str(run_dir), cwd=here, env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "Traceback" not in resumed.stdout + resumed.stderr
    finally:
        gate.close()
        end_all(started(mark, proc.pid))
    assert final_adapters_equal(straight, run_dir), "resumed run differs from the uninterrupted one"
    assert [r["round"] for r in records(run_dir, "round")] == [1, 2, 3]
    assert len(records(run_dir, "resume")) == 1


def test_a_run_rewinds_to_a_kept_checkpoint_and_ends_where_it_did(here: Path) -> None:
    """Four rounds keep the generations of rounds 2-4; `--from-round 2` sets 3, 4 and the
    final adapter aside and redoes them, to the same adapter; round 1 is no longer kept."""
    exp, path = load_experiment(
        experiment_file(here, name="rewind", rounds=4, transport={"mode": "inline"})
    )
    run_dir = run_experiment(exp, path, Console(width=120), fns=PROBES)
    first = load_file(run_dir / "final_adapter" / "adapter_model.safetensors")
    assert list(ckpt.generations(run_dir / "checkpoint")) == [2, 3, 4]

    with RunLock(run_dir), pytest.raises(UserError, match=f"in use by process {os.getpid()} "):
        resume_run(run_dir, Console(width=120), fns=PROBES)
    with pytest.raises(UserError, match=r"no checkpoint of round 1 is kept \(kept: 2, 3, 4\)"):
        resume_run(run_dir, Console(width=120), from_round=1, fns=PROBES)

    console = Console(width=250, record=True)
    resume_run(run_dir, console, from_round=2, fns=PROBES)
    text = console.export_text()
    assert "resuming" in text and "after round 2" in text, text
    (aside,) = (run_dir / "checkpoint").glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == [
        "final_adapter",
        "round-00003",
        "round-00004",
    ]
    again = load_file(run_dir / "final_adapter" / "adapter_model.safetensors")
    assert first.keys() == again.keys() and all((first[k] == again[k]).all() for k in first)
    assert [r["round"] for r in records(run_dir, "round")] == [1, 2, 3, 4]
    assert ckpt.is_finished(run_dir / "checkpoint")


def test_an_engine_that_does_not_answer_its_shutdown_is_ended(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interchange gone before the shutdown (killed, as a terminal's SIGINT killed it at
    963bc67): Parsl's scale-in then waits for its reply forever. The run still ends, saying
    so, once ENGINE_SHUTDOWN_S has passed, and leaves no engine process."""
    from crossfl.endpoints import LocalEngineExecutor

    mark, _ = marked_env()
    monkeypatch.setenv("CROSSFL_TEST_MARK", mark)
    monkeypatch.setattr(lifecycle, "ENGINE_SHUTDOWN_S", 5.0)
    real_shutdown = LocalEngineExecutor.shutdown

    def shutdown(self: LocalEngineExecutor, *args: Any, **kwargs: Any) -> None:
        for role, pid in self.processes():
            if role == "interchange":
                os.kill(pid, signal.SIGKILL)
                self._engine.executor.interchange_proc.wait()
        real_shutdown(self, *args, **kwargs)

    monkeypatch.setattr(LocalEngineExecutor, "shutdown", shutdown)
    exp, path = load_experiment(
        experiment_file(
            here, name="unanswered", rounds=1, sites=[{"name": "east", "site": "local"}]
        )
    )
    console = Console(width=250, record=True)
    done: list[Path] = []
    runner = threading.Thread(
        target=lambda: done.append(run_experiment(exp, path, console, fns=PROBES)), daemon=True
    )
    try:
        runner.start()
        runner.join(LIMIT_S)
        assert done, "the run hung in its engine's shutdown"
        assert "east: its engine did not shut down within 5 s" in console.export_text()
        assert not started(mark) and not interchanges(), "an engine outlived its run"
    finally:
        end_all(started(mark) + interchanges())
    assert ckpt.is_finished(done[0] / "checkpoint")


def test_a_full_disk_ends_the_run_in_one_line_and_it_resumes(
    here: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run directory's filesystem fills up after round 1's checkpoint: the run ends with
    one UserError line (no traceback) naming the kept checkpoint and the resume command;
    once there is space again, the resume finishes the run."""
    with small_filesystem(tmp_path / "runs", "32m") as runs:
        monkeypatch.setattr(lifecycle, "runs_dir", lambda: runs)
        filler: list[Path] = []
        real_save = ckpt.save

        def save(ckpt_dir: Path, c: ckpt.Checkpoint, *args: Any, **kwargs: Any) -> Path:
            gen = real_save(ckpt_dir, c, *args, **kwargs)
            if c.round == 1 and not filler:
                filler.append(fill(runs))
            return gen

        monkeypatch.setattr(ckpt, "save", save)
        exp, path = load_experiment(
            experiment_file(here, name="full", rounds=2, transport={"mode": "inline"})
        )
        with pytest.raises(UserError) as full:
            run_experiment(exp, path, Console(width=120), fns=PROBES)
        (run_dir,) = runs.glob("full-*")
        line = full.value.render()
        assert "\n" not in line and "disk full" in line, line
        assert "checkpoint after round 1 of 2 kept" in line, line
        assert f"crossfl resume {run_dir}" in line, line
        assert (c := ckpt.load(run_dir / "checkpoint")) is not None and c.round == 1
        filler[0].unlink()
        monkeypatch.setattr(ckpt, "save", real_save)
        resume_run(run_dir, Console(width=120), fns=PROBES)
        assert ckpt.is_finished(run_dir / "checkpoint")
        assert [r["round"] for r in records(run_dir, "round")] == [1, 2]
        assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["round"] == 2
