"""Whole runs on the real engine: a killed-and-resumed FedAvg run ends bit-for-bit where an
uninterrupted one does; the asynchronous driver with adapters moved by reference (shared
filesystem, and Globus Transfer with the TransferClient substituted at its interface); and
fault handling driven by probe tasks that really kill their worker or really raise."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from rich.console import Console
from safetensors.torch import load_file
from testkit.gate import FifoGate, wait_for
from testkit.globus_transfer import FakeTransferClient
from testkit.processes import alive, describe, end, interchanges, marked_env, started
from testkit.scratch_project import make_project, write_experiment

from crossfl.client import probes
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import RunStopped, resume_run, run_experiment
from crossfl.server.report import compare_plot, summary_tables
from crossfl.server.telemetry import live_records, read_metrics
from crossfl.server.transport import TaskFns

pytestmark = pytest.mark.slow  # runs on real engines (`make test-fast` leaves them out)

ROOT = Path(__file__).resolve().parents[1]
PROBES = TaskFns(train=probes.faulty_train, evaluate=probes.noop_evaluate)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("server-project"), ROOT)


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    return project


def experiment_file(root: Path, **changes: Any) -> Path:
    return write_experiment(root, str(changes.pop("name", "runs")), **changes)


def run_dir_of(root: Path, name: str) -> Path:
    (found,) = (root / "runs").glob(f"{name}-*")
    return found


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    """The live records of one kind, as plain data."""
    return [r.model_dump() for r in live_records(run_dir / "metrics.jsonl") if r.kind == kind]


def by_reference(root: Path) -> tuple[dict[str, Any], FakeTransferClient]:
    """Experiment changes that send east's adapters over the shared filesystem and west's by
    Globus Transfer between two directories standing for collections."""
    server_id, site_id = str(uuid.uuid4()), str(uuid.uuid4())
    server_root, site_root = root / "server-collection", root / "site-collection"
    fake = FakeTransferClient({server_id: server_root, site_id: site_root})
    changes = {
        "transport": {
            "inline_limit_mb": 0.001,
            "globus": {
                "collection": server_id,
                "path": "/srv",
                "local_path": str(server_root / "srv"),
            },
        },
        "sites": [
            {"name": "east", "site": "local"},
            {
                "name": "west",
                "site": "local",
                "transport": {
                    "mode": "globus_transfer",
                    "globus": {
                        "collection": site_id,
                        "path": "/lus/w",
                        "local_path": str(site_root / "lus" / "w"),
                    },
                },
            },
        ],
    }
    return changes, fake


def test_killed_and_resumed_run_ends_with_the_same_adapter(here: Path) -> None:
    """The uninterrupted run moves adapters inline; the killed one by reference (shared
    filesystem and Globus Transfer): the final adapters are still equal bit for bit."""
    exp, path = load_experiment(experiment_file(here, name="straight", rounds=2))
    straight = run_experiment(exp, path, Console(width=120))

    changes, fake = by_reference(here)
    exp, path = load_experiment(experiment_file(here, name="killed", rounds=2, **changes))
    with pytest.raises(RunStopped):
        run_experiment(exp, path, Console(width=120), stop_after=1, transfer_client=lambda: fake)
    killed = run_dir_of(here, "killed")
    assert json.loads((killed / "checkpoint" / "state.json").read_text())["round"] == 1
    assert not (killed / "final_adapter").exists()
    # what a process killed during round 2 would have left behind
    ghost = records(killed, "task")[-1] | {"round": 2, "error": "ghost"}
    with (killed / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(ghost) + "\n")
        fh.write('{"kind": "task", "rou')  # a line cut short

    console = Console(width=120, record=True)
    assert resume_run(killed, console, transfer_client=lambda: fake) == killed
    assert "resuming" in console.export_text()

    a = load_file(straight / "final_adapter" / "adapter_model.safetensors")
    b = load_file(killed / "final_adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    import torch

    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    tasks = records(killed, "task")
    assert sorted((t["round"], t["site"]) for t in tasks) == [
        (r, s) for r in (1, 2) for s in ("east", "west")
    ]
    assert not any(t["error"] == "ghost" for t in tasks)
    assert any(
        r.get("error") == "ghost" for r in read_metrics(killed / "metrics.jsonl")
    )  # kept in the file
    assert len(records(killed, "baseline")) == 1 and len(records(killed, "resume")) == 1
    assert json.loads((killed / "checkpoint" / "state.json").read_text())["finished"] is True

    # transport: by reference both ways, bytes counted per task whichever way they went
    assert {t["transport"] for t in tasks if t["site"] == "east"} == {"shared_fs"}
    assert {t["transport"] for t in tasks if t["site"] == "west"} == {"globus_transfer"}
    assert all(t["transport_up"] == t["transport"] and t["bytes_up"] > 1000 for t in tasks)
    assert all(t["bytes_down"] > 1000 for t in tasks if t["round"] > 1)
    moved = [item["destination_path"] for d in fake.submitted for item in d["DATA"]]
    assert any(p.startswith("/lus/w/killed-") for p in moved) and any(
        p.startswith("/srv/killed-") for p in moved
    )
    assert list((killed / "transport").glob("global-v*.safetensors"))
    assert {t["transport_up"] for t in records(straight, "task")} == {
        "inline"
    }  # under the 7 MB limit

    again = Console(width=120, record=True)
    resume_run(killed, again)
    assert "already finished" in again.export_text()

    overlay = compare_plot([straight, killed], here / "runs" / "compare.png")
    assert overlay.stat().st_size > 0
    assert (killed / "bytes_per_round.png").stat().st_size > 0


def test_async_driver_keeps_sites_busy_and_resumes(here: Path) -> None:
    exp, path = load_experiment(
        experiment_file(
            here,
            name="async",
            rounds=4,
            evaluate_every=2,
            strategy={"name": "fedasync", "kwargs": {"alpha": 0.5, "staleness_fn": "polynomial"}},
            sites=[
                {"name": "east", "site": "local", "training": {"local_steps": 1}},
                {
                    "name": "west",
                    "site": "local",
                    "training": {"local_steps": 4, "max_samples": 40},
                },
            ],
        )
    )
    with pytest.raises(RunStopped):
        run_experiment(exp, path, Console(width=120), stop_after=2)
    run_dir = run_dir_of(here, "async")
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["version"] == 2
    resume_run(run_dir, Console(width=120))
    assert len(records(run_dir, "resume")) == 1

    aggs = records(run_dir, "aggregation")
    assert [a["version"] for a in aggs] == [1, 2, 3, 4] and all(
        a["driver"] == "async" for a in aggs
    )
    assert all(len(a["sites"]) == 1 for a in aggs)  # one update per aggregation
    tasks = [t for t in records(run_dir, "task") if t["status"] == "ok"]
    assert len(tasks) == 4
    assert all(0 <= t["staleness"] == t["arrived_version"] - t["base_version"] for t in tasks)
    # a site's next task starts from the global version current when it was submitted
    east = [t for t in tasks if t["site"] == "east"]
    assert [t["base_version"] for t in east] == sorted(t["base_version"] for t in east)
    assert {t["local_steps"] for t in tasks} <= {1, 4}
    assert {t["local_steps"] for t in east} == {1}
    assert [r["round"] for r in records(run_dir, "round")] == [2, 4]
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["finished"] is True
    assert (run_dir / "final_adapter" / "adapter_model.safetensors").is_file()
    assert len(summary_tables(run_dir)) == 6  # loss, sites (2), allocation, bytes, summary


def test_faults_retry_reject_fail_and_park(here: Path) -> None:
    data = here / "probe"
    data.mkdir(exist_ok=True)
    names = {"a": "a-dies", "b": "b-ok", "c": "c-nan", "d": "d-far", "e": "e-usererror"}
    for name in names.values():
        (data / f"{name}.jsonl").write_text('{"input": "x", "output": "y"}\n')
    exp, path = load_experiment(
        experiment_file(
            here,
            name="faults",
            rounds=3,
            sites=[
                {"name": k, "site": "local", "data_path": str(data / f"{v}.jsonl")}
                for k, v in names.items()
            ],
            faults={"retries": 1, "backoff_s": 0.1, "park_after": 2, "park_rounds": 5},
            transport={"mode": "inline"},
        )
    )
    run_dir = run_experiment(exp, path, Console(width=120), fns=PROBES)
    tasks = records(run_dir, "task")
    by = {(t["site"], t["round"]): t for t in tasks}
    a1 = by[("a", 1)]
    assert a1["status"] == "ok" and a1["attempts"] == 2 and "WorkerLost" in a1["retried_errors"][0]
    assert all(
        by[("c", r)]["status"] == "rejected" and "non-finite" in by[("c", r)]["reason"]
        for r in (1, 2)
    )
    assert all(
        by[("d", r)]["status"] == "rejected" and "too far" in by[("d", r)]["reason"] for r in (1, 2)
    )
    e1 = by[("e", 1)]
    assert e1["status"] == "failed" and e1["attempts"] == 1 and "UserError" in e1["error"]
    assert by[("e", 2)]["parked_until_round"] == 8 and ("e", 3) not in by
    skipped = records(run_dir, "skipped")
    assert {(s["site"], s["round"]) for s in skipped} >= {("e", 3), ("c", 3), ("d", 3)}
    assert all("parked" in s["reason"] for s in skipped)
    assert all(sorted(a["sites"]) == ["a", "b"] for a in records(run_dir, "aggregation"))


def test_deadline_aggregates_what_arrived_and_merges_late_updates(here: Path) -> None:
    data = here / "probe"
    data.mkdir(exist_ok=True)
    # g's first update waits until f's second task has started: it misses round 1 whatever
    # the machine's load. f's third waits until g's has returned, so it arrives late and
    # rounds before the run ends (each round lasts at least the 2 s deadline), however slowly
    # g's engine starts.
    for name in ("gate", "arrived"):
        (data / name).unlink(missing_ok=True)
    for name in ("f-opens", "g-waits"):
        (data / f"{name}.jsonl").write_text('{"input": "x", "output": "y"}\n')
    exp, path = load_experiment(
        experiment_file(
            here,
            name="deadline",
            rounds=8,
            strategy={"name": "fedqueue"},
            quorum={"min_clients": 1, "deadline_s": 2},
            transport={"mode": "inline"},
            sites=[
                {"name": "f", "site": "local", "data_path": str(data / "f-opens.jsonl")},
                {"name": "g", "site": "local", "data_path": str(data / "g-waits.jsonl")},
            ],
        )
    )
    run_dir = run_experiment(exp, path, Console(width=120), fns=PROBES)
    aggs = records(run_dir, "aggregation")
    assert aggs[0]["sites"] == ["f"]  # g missed the first deadline
    late = [t for t in records(run_dir, "task") if t.get("late")]
    assert late and late[0]["site"] == "g" and late[0]["status"] == "ok" and late[0]["round"] == 1
    merged = next(a for a in aggs if a["round"] == late[0]["arrived_in_round"])
    assert "g" in merged["sites"] and merged["staleness"]["g"] > 0
    assert any(
        s["site"] == "g" and "still running" in s["reason"] for s in records(run_dir, "skipped")
    )


# ------------------------------------------------------------------ `crossfl run` under signals
# A site's data (or the validation data) is a named pipe served by a FifoGate: the test knows
# a task is mid-round because it is waiting on that pipe, so no signal races the run.


def cli(*args: str, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`crossfl ARGS` in a session of its own: what it starts can be found by that session."""
    return subprocess.Popen(
        [sys.executable, "-m", "crossfl", *args],
        cwd=cwd,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def cli_done(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossfl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def final_adapters_equal(a: Path, b: Path) -> bool:
    import torch

    x = load_file(a / "final_adapter" / "adapter_model.safetensors")
    y = load_file(b / "final_adapter" / "adapter_model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def east_data(here: Path) -> bytes:
    """A small training file for east (40 records)."""
    return b"".join((here / "data" / "train.jsonl").read_bytes().splitlines(keepends=True)[:40])


def gated_sites(here: Path, name: str) -> tuple[FifoGate, list[dict[str, Any]]]:
    """east reads its training data through a gate that serves round 1 and holds round 2;
    west trains on its partition of data.train."""
    gate = FifoGate(here / "gated" / f"{name}-east.jsonl", east_data(here), serve=1)
    return gate, [
        {"name": "east", "site": "local", "data_path": str(gate.path)},
        {"name": "west", "site": "local"},
    ]


def test_run_killed_with_sigkill_takes_its_engines_along_and_resumes_by_relative_name(
    here: Path,
) -> None:
    """kill -9 of `crossfl run` mid-round: the engines die with it; `crossfl resume runs/NAME`
    (relative) finishes the run with the adapter an uninterrupted run ends with, bit for bit."""
    plain = here / "gated" / "plain-east.jsonl"
    plain.parent.mkdir(exist_ok=True)
    plain.write_bytes(east_data(here))
    exp, path = load_experiment(
        experiment_file(
            here,
            name="unkilled",
            sites=[
                {"name": "east", "site": "local", "data_path": str(plain)},
                {"name": "west", "site": "local"},
            ],
        )
    )
    straight = run_experiment(exp, path, Console(width=120))

    gate, sites = gated_sites(here, "sigkill")
    mark, env = marked_env()
    try:
        path = experiment_file(here, name="sigkill", sites=sites)
        proc = cli("run", str(path), cwd=here, env=env, log=here / "sigkill.log")
        held = gate.wait_for_reader(alive=lambda: proc.poll() is None)  # east is in round 2
        engines = [p for p in started(mark, proc.pid) if p.pid != proc.pid]
        assert len(engines) >= 4, describe(engines)  # two interchanges, two worker pools
        proc.kill()
        proc.wait()
        wait_for(
            "the killed run's engine processes to end", lambda: not alive(engines), limit_s=120
        )
        gate.release(held)
        run_dir = run_dir_of(here, "sigkill")
        assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["round"] == 1
        # the killed server's lock: its owner record stays; the resume takes it over
        assert json.loads((run_dir / "run.owner.json").read_text())["pid"] == proc.pid
        resumed = cli_done("resume", str(run_dir.relative_to(here)), cwd=here, env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"process {proc.pid} on " in resumed.stdout and "taken over" in resumed.stdout
    finally:
        gate.close()
        end(started(mark, proc.pid))
    assert final_adapters_equal(straight, run_dir), "resumed run differs from the uninterrupted one"
    assert sorted((t["round"], t["site"]) for t in records(run_dir, "task")) == [
        (r, s) for r in (1, 2, 3) for s in ("east", "west")
    ]


def test_a_local_run_listens_on_loopback_only(here: Path) -> None:
    """While `crossfl run` is mid-round on two local sites, no process of the run (the
    server, the engines' interchanges, worker pools and workers) listens beyond loopback:
    the interchange binds the site's `address`, not every interface."""
    gate = FifoGate(here / "gated" / "listen-east.jsonl", east_data(here), serve=0)
    mark, env = marked_env()
    sites = [
        {"name": "east", "site": "local", "data_path": str(gate.path)},
        {"name": "west", "site": "local"},
    ]
    try:
        path = experiment_file(here, name="listen", sites=sites)
        proc = cli("run", str(path), cwd=here, env=env, log=here / "listen.log")
        gate.wait_for_reader(alive=lambda: proc.poll() is None)  # east is in round 1
        procs = started(mark, proc.pid)
        listening = []
        for p in procs:
            try:
                conns = p.connections(kind="inet")
            except psutil.Error:
                continue
            listening += [(p.pid, c.laddr) for c in conns if c.status == psutil.CONN_LISTEN]
        assert len(interchanges_of(procs)) == 2, describe(procs)
        assert listening, "the interchanges listen (on loopback)"
        beyond = [x for x in listening if not loopback(x[1].ip)]
        assert not beyond, (beyond, describe(procs))
    finally:
        end(started(mark, proc.pid))
        gate.close()


def loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (zmq's IPv6 socket)
    return (mapped or address).is_loopback


def interchanges_of(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in alive(procs) if "interchange" in " ".join(p.cmdline())]


def test_engines_a_dead_run_left_are_reaped_by_the_next_run(here: Path) -> None:
    """Server and watchdog both killed: the engines outlive them, until the next `crossfl run`
    reaps them; `crossfl resume /abs/path/` (trailing slash) then finishes the dead run."""
    gate, sites = gated_sites(here, "orphans")
    mark, env = marked_env()
    try:
        path = experiment_file(here, name="orphans", rounds=2, sites=sites)
        proc = cli("run", str(path), cwd=here, env=env, log=here / "orphans.log")
        held = gate.wait_for_reader(alive=lambda: proc.poll() is None)
        ours = [p for p in started(mark, proc.pid) if p.pid != proc.pid]
        watchdogs = [p for p in ours if "crossfl.server.reaper" in " ".join(p.cmdline())]
        for w in watchdogs:
            w.kill()
        wait_for("the watchdog to end", lambda: not alive(watchdogs))
        proc.kill()
        proc.wait()
        engines = alive([p for p in ours if p not in watchdogs])
        assert len(engines) >= 4, "nothing else ends the engines of a run whose watchdog died too"

        _, other_env = marked_env()
        nxt = cli_done(
            "run",
            str(
                experiment_file(
                    here, name="next", rounds=1, sites=[{"name": "east", "site": "local"}]
                )
            ),
            cwd=here,
            env=other_env,
        )
        assert nxt.returncode == 0, nxt.stdout + nxt.stderr
        assert not alive(engines), describe(alive(engines))

        gate.release(held)
        run_dir = run_dir_of(here, "orphans")
        resumed = cli_done("resume", f"{run_dir}/", cwd=here / "data", env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    finally:
        gate.close()
        end(started(mark, proc.pid))
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["finished"] is True


@pytest.mark.parametrize("phase", ["training", "evaluation"])
def test_cli_run_stopped_by_sigterm_mid_round_resumes_to_the_end(here: Path, phase: str) -> None:
    """SIGTERM (a batch job at its walltime) while a site trains, or while the evaluating site
    evaluates round 1: exit 130 with the resume hint and no traceback; `crossfl resume`
    finishes the run in the same directory."""
    name = f"sigterm-{phase}"
    if phase == "training":
        gate, sites = gated_sites(here, name)
        changes: dict[str, Any] = {"sites": sites}
    else:  # the baseline evaluation is served, round 1's is held
        gate = FifoGate(
            here / "gated" / f"{name}-validation.jsonl",
            (here / "data" / "validation.jsonl").read_bytes(),
            serve=1,
        )
        changes = {
            "sites": [{"name": "east", "site": "local"}],
            "data": {"train": "data/train.jsonl", "validation": str(gate.path)},
        }
    mark, env = marked_env()
    try:
        proc = cli(
            "run",
            str(experiment_file(here, name=name, **changes)),
            cwd=here,
            env=env,
            log=here / f"{name}.log",
        )
        held = gate.wait_for_reader(alive=lambda: proc.poll() is None)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 130, (here / f"{name}.log").read_text()
        out = (here / f"{name}.log").read_text()
        run_dir = run_dir_of(here, name)
        assert f"crossfl resume {run_dir}" in out and "Traceback" not in out, out
        assert not (run_dir / "final_adapter").exists()
        assert not started(mark, proc.pid), "a stopped run leaves no engine process"
        gate.release(held)
        resumed = cli_done("resume", str(run_dir), cwd=here, env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "Traceback" not in resumed.stdout + resumed.stderr
    finally:
        gate.close()
        end(started(mark, proc.pid))
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["finished"] is True
    tasks = records(run_dir, "task")
    assert sorted({(t["round"], t["site"]) for t in tasks}) == sorted(
        {(r, e["name"]) for r in (1, 2, 3) for e in changes["sites"]}
    )
    assert [r["round"] for r in records(run_dir, "round")] == [1, 2, 3]


# ------------------------------------------------------------------ checks before anything starts


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"model": {"path": "no/such/model"}}, "model.path"),
        (
            {"sites": [{"name": "east", "site": "local", "model_path": "no/model"}]},
            "sites[east].model_path",
        ),
        (
            {"sites": [{"name": "east", "site": "local", "data_path": "no/such.jsonl"}]},
            "sites[east].data_path",
        ),
        (
            {"data": {"train": "no/train.jsonl", "validation": "data/validation.jsonl"}},
            "data.train",
        ),
        (
            {"data": {"train": "data/train.jsonl", "validation": "no/validation.jsonl"}},
            "data.validation",
        ),
        ({"strategy": {"name": "fedavg", "kwargs": {"colour": 1}}}, "strategy.kwargs.colour"),
        ({"strategy": {"name": "fedasync"}, "driver": "sync"}, "driver"),
        ({"sites": [{"name": "east", "site": "nowhere"}]}, "nowhere"),
        (
            {"sites": [{"name": "east", "site": "local", "user_options": {"colour": "red"}}]},
            "colour",
        ),
    ],
    ids=[
        "model",
        "site-model",
        "site-data",
        "train",
        "validation",
        "kwargs",
        "driver",
        "catalog",
        "options",
    ],
)
def test_a_run_that_fails_its_checks_starts_no_engine_and_leaves_no_run(
    here: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], where: str
) -> None:
    from crossfl.endpoints import LocalEngineExecutor
    from crossfl.errors import UserError

    def no_engine(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an engine was started before the run's checks passed")

    monkeypatch.setattr(LocalEngineExecutor, "__init__", no_engine)
    name = f"checks-{uuid.uuid4().hex[:6]}"
    exp, path = load_experiment(experiment_file(here, name=name, **changes))
    with pytest.raises(UserError) as info:
        run_experiment(exp, path, Console(width=120))
    assert where in info.value.render()
    assert not list((here / "runs").glob(f"{name}-*")), (
        "a run that failed its checks left a directory"
    )


# ------------------------------------------------------------------ signals at every phase


@pytest.mark.parametrize("phase", ["startup", "shutdown"])
def test_sigterm_while_engines_start_or_stop_ends_cleanly(
    here: Path, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    """SIGTERM while the second engine starts: the run stops with the resume hint and every
    engine it started is shut down; while the engines stop after the last round: the run is
    finished, and the signal does not cut the other engines' shutdown short."""
    from crossfl.endpoints import LocalEngineExecutor

    mark, _ = marked_env()
    monkeypatch.setenv("CROSSFL_TEST_MARK", mark)
    real_init, real_shutdown = LocalEngineExecutor.__init__, LocalEngineExecutor.shutdown
    opened: list[str] = []

    def init(self: LocalEngineExecutor, site: str, *args: Any, **kwargs: Any) -> None:
        real_init(self, site, *args, **kwargs)
        opened.append(site)
        if phase == "startup" and len(opened) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    def shutdown(self: LocalEngineExecutor, *args: Any, **kwargs: Any) -> None:
        if phase == "shutdown":
            os.kill(os.getpid(), signal.SIGTERM)
        real_shutdown(self, *args, **kwargs)

    monkeypatch.setattr(LocalEngineExecutor, "__init__", init)
    monkeypatch.setattr(LocalEngineExecutor, "shutdown", shutdown)
    name = f"signal-{phase}"
    exp, path = load_experiment(
        experiment_file(here, name=name, rounds=2, transport={"mode": "inline"})
    )
    console = Console(width=250, record=True)
    try:
        if phase == "startup":
            with pytest.raises(KeyboardInterrupt):
                run_experiment(exp, path, console, fns=PROBES)
            run_dir = run_dir_of(here, name)
            assert f"crossfl resume {run_dir}" in console.export_text()
        else:
            run_dir = run_experiment(exp, path, console, fns=PROBES)
        assert not started(mark) and not interchanges(), "an engine outlived its run"
        monkeypatch.setattr(LocalEngineExecutor, "shutdown", real_shutdown)
        resume_run(run_dir, Console(width=120), fns=PROBES)
    finally:
        end(started(mark) + interchanges())
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["finished"] is True


# ------------------------------------------------------------------ strategies the driver serves


def test_an_appfl_strategy_sees_the_adapter_tensor_by_tensor(here: Path) -> None:
    """The driver hands the adapter's layout to the strategy: APPFL's FedAdam keeps its moments
    per LoRA tensor (not one flat "params" key), also after a resume."""
    import torch

    from crossfl.server import checkpoint as ckpt

    kwargs = {
        "client_weights_mode": "sample_size",
        "server_learning_rate": 0.05,
        "server_momentum_param_1": 0.8,
        "server_momentum_param_2": 0.95,
        "server_adapt_param": 0.01,
    }
    exp, path = load_experiment(
        experiment_file(
            here,
            name="appfl",
            rounds=2,
            transport={"mode": "inline"},
            strategy={"name": "appfl:FedAdamAggregator", "kwargs": kwargs},
        )
    )
    with pytest.raises(RunStopped):
        run_experiment(exp, path, Console(width=120), fns=PROBES, stop_after=1)
    run_dir = run_dir_of(here, "appfl")
    resume_run(run_dir, Console(width=120), fns=PROBES)
    saved = ckpt.load(run_dir / "checkpoint")
    assert saved is not None and saved.spec is not None and saved.round == 2
    moments = saved.strategy_state["m_vector"]
    assert sorted(moments) == sorted(saved.spec.keys)
    assert all(isinstance(v, torch.Tensor) for v in moments.values())


def test_a_run_named_any_way_is_one_absolute_directory(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crossfl resume` takes runs/NAME, NAME, /abs/path, a trailing slash or a symlink: each is
    the run's one absolute directory, so every path a site is handed from it is absolute."""
    from crossfl.cli.run import resolve_run_dir
    from crossfl.server.lifecycle import run_directory

    run_dir = here / "runs" / "named-20260101-000000"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "experiment.yaml").write_text("name: named\n")
    link = here / "latest"
    link.unlink(missing_ok=True)
    link.symlink_to(run_dir)
    monkeypatch.chdir(here)
    for ref in (
        "runs/named-20260101-000000",
        "named-20260101-000000",
        str(run_dir),
        f"{run_dir}/",
        "runs/named-20260101-000000/",
        "latest",
        "./runs/../runs/named-20260101-000000",
    ):
        found = run_directory(resolve_run_dir(ref))
        assert found.is_absolute() and found == run_dir.resolve(), ref


def test_an_experiment_is_resolved_once(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each site entry's catalog file is read and rendered once for the whole run; the plan
    then carries it (to the executors, the drivers and the transport)."""
    import crossfl.render
    import crossfl.sites
    from crossfl.server.plan import plan_run

    calls: dict[str, int] = {"load_site": 0, "render_site": 0}

    def counted(module: Any, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(crossfl.sites, "load_site")
    counted(crossfl.render, "render_site")
    exp, path = load_experiment(experiment_file(here, name="once"))
    plan = plan_run(exp, path)
    assert calls == {"load_site": 2, "render_site": 2}
    assert all(
        Path(s.model_path).is_absolute() and s.engine_config is not None
        for s in plan.sites.values()
    )
    task = plan.train_task("east", "/data/east.jsonl", plan.client_plan("east"), 1)
    assert task.model_path == plan.sites["east"].model_path and task.lora == plan.lora
