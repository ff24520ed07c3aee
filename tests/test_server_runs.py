"""Whole runs on the real engine: a killed-and-resumed FedAvg run ends bit-for-bit where an
uninterrupted one does; the asynchronous driver with adapters moved by reference (shared
filesystem, and Globus Transfer with the TransferClient substituted at its interface); and
fault handling driven by probe tasks that really kill their worker or really raise."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from safetensors.torch import load_file

from crossfl.server import probe_tasks
from crossfl.server.driver import RunStopped, resume_run, run_experiment
from crossfl.server.experiment import load_experiment
from crossfl.server.report import compare_plot, summary_tables
from crossfl.server.scratch_project import make_project, write_experiment
from crossfl.server.telemetry import live_records, read_metrics
from crossfl.server.transport import TaskFns
from test_server_units import FakeTransferClient

ROOT = Path(__file__).resolve().parents[1]
# probe tasks travel inline (the by-reference wrappers call the real client tasks)
PROBES = TaskFns(train=probe_tasks.faulty_train, evaluate=probe_tasks.noop_evaluate)


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
    return [r for r in live_records(run_dir / "metrics.jsonl") if r["kind"] == kind]


def by_reference(root: Path) -> tuple[dict[str, Any], FakeTransferClient]:
    """Experiment changes that send east's adapters over the shared filesystem and west's by
    Globus Transfer between two directories standing for collections."""
    server_id, site_id = str(uuid.uuid4()), str(uuid.uuid4())
    server_root, site_root = root / "server-collection", root / "site-collection"
    fake = FakeTransferClient({server_id: server_root, site_id: site_root})
    changes = {
        "transport": {"inline_limit_mb": 0.001,
                      "globus": {"collection": server_id, "path": "/srv", "local_path": str(server_root / "srv")}},
        "sites": [{"name": "east", "site": "local"},
                  {"name": "west", "site": "local",
                   "transport": {"mode": "globus_transfer",
                                 "globus": {"collection": site_id, "path": "/lus/w",
                                            "local_path": str(site_root / "lus" / "w")}}}]}
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
    with (killed / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"kind": "task", "round": 2, "site": "east", "status": "ok", "ghost": True}) + "\n")
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
    assert sorted((t["round"], t["site"]) for t in tasks) == [(r, s) for r in (1, 2) for s in ("east", "west")]
    assert not any(t.get("ghost") for t in tasks)
    assert any(r.get("ghost") for r in read_metrics(killed / "metrics.jsonl"))  # kept in the file
    assert len(records(killed, "baseline")) == 1 and len(records(killed, "resume")) == 1
    assert json.loads((killed / "checkpoint" / "state.json").read_text())["finished"] is True

    # transport: by reference both ways, bytes counted per task whichever way they went
    assert {t["transport"] for t in tasks if t["site"] == "east"} == {"shared_fs"}
    assert {t["transport"] for t in tasks if t["site"] == "west"} == {"globus_transfer"}
    assert all(t["transport_up"] == t["transport"] and t["bytes_up"] > 1000 for t in tasks)
    assert all(t["bytes_down"] > 1000 for t in tasks if t["round"] > 1)
    moved = [item["destination_path"] for d in fake.submitted for item in d["DATA"]]
    assert any(p.startswith("/lus/w/killed-") for p in moved) and any(p.startswith("/srv/killed-") for p in moved)
    assert list((killed / "transport").glob("global-v*.safetensors"))
    assert {t["transport_up"] for t in records(straight, "task")} == {"inline"}  # under the 7 MB limit

    again = Console(width=120, record=True)
    resume_run(killed, again)
    assert "already finished" in again.export_text()

    overlay = compare_plot([straight, killed], here / "runs" / "compare.png")
    assert overlay.stat().st_size > 0
    assert (killed / "bytes_per_round.png").stat().st_size > 0


def test_async_driver_keeps_sites_busy_and_resumes(here: Path) -> None:
    exp, path = load_experiment(experiment_file(
        here, name="async", rounds=4, evaluate_every=2,
        strategy={"name": "fedasync", "kwargs": {"alpha": 0.5, "staleness_fn": "polynomial"}},
        sites=[{"name": "east", "site": "local", "training": {"local_steps": 1}},
               {"name": "west", "site": "local", "training": {"local_steps": 4, "max_samples": 40}}]))
    with pytest.raises(RunStopped):
        run_experiment(exp, path, Console(width=120), stop_after=2)
    run_dir = run_dir_of(here, "async")
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["version"] == 2
    resume_run(run_dir, Console(width=120))
    assert len(records(run_dir, "resume")) == 1

    aggs = records(run_dir, "aggregation")
    assert [a["version"] for a in aggs] == [1, 2, 3, 4] and all(a["driver"] == "async" for a in aggs)
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
    assert len(summary_tables(run_dir)) == 4


def test_faults_retry_reject_fail_and_park(here: Path) -> None:
    data = here / "probe"
    data.mkdir(exist_ok=True)
    names = {"a": "a-dies", "b": "b-ok", "c": "c-nan", "d": "d-far", "e": "e-usererror"}
    for name in names.values():
        (data / f"{name}.jsonl").write_text('{"input": "x", "output": "y"}\n')
    exp, path = load_experiment(experiment_file(
        here, name="faults", rounds=3,
        sites=[{"name": k, "site": "local", "data_path": str(data / f"{v}.jsonl")} for k, v in names.items()],
        faults={"retries": 1, "backoff_s": 0.1, "park_after": 2, "park_rounds": 5}, transport={"mode": "inline"}))
    run_dir = run_experiment(exp, path, Console(width=120), fns=PROBES)
    tasks = records(run_dir, "task")
    by = {(t["site"], t["round"]): t for t in tasks}
    a1 = by[("a", 1)]
    assert a1["status"] == "ok" and a1["attempts"] == 2 and "WorkerLost" in a1["retried_errors"][0]
    assert all(by[("c", r)]["status"] == "rejected" and "non-finite" in by[("c", r)]["reason"] for r in (1, 2))
    assert all(by[("d", r)]["status"] == "rejected" and "too far" in by[("d", r)]["reason"] for r in (1, 2))
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
    for name in ("f-sleep1", "g-sleep6"):
        (data / f"{name}.jsonl").write_text('{"input": "x", "output": "y"}\n')
    exp, path = load_experiment(experiment_file(
        here, name="deadline", rounds=8, strategy={"name": "fedqueue"},
        quorum={"min_clients": 1, "deadline_s": 2}, transport={"mode": "inline"},
        sites=[{"name": "f", "site": "local", "data_path": str(data / "f-sleep1.jsonl")},
               {"name": "g", "site": "local", "data_path": str(data / "g-sleep6.jsonl")}]))
    run_dir = run_experiment(exp, path, Console(width=120), fns=PROBES)
    aggs = records(run_dir, "aggregation")
    assert aggs[0]["sites"] == ["f"]  # g missed the first deadline
    late = [t for t in records(run_dir, "task") if t.get("late")]
    assert late and late[0]["site"] == "g" and late[0]["status"] == "ok" and late[0]["round"] == 1
    merged = next(a for a in aggs if a["round"] == late[0]["arrived_in_round"])
    assert "g" in merged["sites"] and merged["staleness"]["g"] > 0
    assert any(s["site"] == "g" and "still running" in s["reason"] for s in records(run_dir, "skipped"))


def test_cli_run_killed_by_sigterm_resumes_to_the_end(here: Path) -> None:
    """`crossfl run` gets SIGTERM (as a batch job at walltime does) after its first checkpoint;
    `crossfl resume RUN` finishes it in the same directory."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = experiment_file(here, name="sigterm", rounds=3, sites=[{"name": "east", "site": "local"}])
    env = dict(os.environ, CROSSFL_ROOT=str(here))
    proc = subprocess.Popen([sys.executable, "-m", "crossfl", "run", str(path)], cwd=here, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not list((here / "runs").glob("sigterm-*/checkpoint/state.json")):
            assert proc.poll() is None and time.time() < deadline, proc.stdout and proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    run_dir = run_dir_of(here, "sigterm")
    assert "crossfl resume" in out and not (run_dir / "final_adapter").exists()
    resumed = subprocess.run([sys.executable, "-m", "crossfl", "resume", str(run_dir)], cwd=here, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["finished"] is True
    tasks = records(run_dir, "task")
    assert sorted((t["round"], t["site"]) for t in tasks) == [(1, "east"), (2, "east"), (3, "east")]
    assert [r["round"] for r in records(run_dir, "round")] == [1, 2, 3]
