"""A two-site, two-round federation end to end on the real engine: data built with RDKit, a tiny
Llama built offline, each site its own GlobusComputeEngine, FedAvg over LoRA adapters."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
import yaml
from rich.console import Console
from testkit.scratch_project import make_project, write_experiment

from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import RunFailed, run_experiment

pytestmark = (
    pytest.mark.slow
)  # federations on real engines, real training (`make test-fast` leaves them out)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root with the real catalog and templates, and small data and model."""
    return make_project(tmp_path_factory.mktemp("project"), ROOT, molecules=200, pretrain_steps=20)


def experiment_file(root: Path, **changes: object) -> Path:
    base: dict[str, object] = {
        "name": "two-sites",
        "rounds": 2,
        "data": {
            "train": "data/train.jsonl",
            "validation": "data/validation.jsonl",
            "partition": {"scheme": "by_task", "seed": 0},
        },
        "training": {
            "local_steps": 3,
            "batch_size": 4,
            "lr": 0.005,
            "max_length": 96,
            "torch_threads": 1,
        },
        "evaluation": {"max_samples": 24, "batch_size": 8, "generate_max_new_tokens": 8},
    }
    base.update(changes)
    return write_experiment(root, str(base.pop("name")), **base)


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_two_site_two_round_federation(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    before = children()
    exp, path = load_experiment(experiment_file(project))
    console = Console(width=80, record=True)
    run_dir = run_experiment(exp, path, console)
    # at 80 columns: paths whole on their lines (copyable), the learning said in one line
    printed = console.export_text().splitlines()
    assert f"run directory: {run_dir}" in printed
    assert any(ln.startswith(f"plots, metrics and final adapter in {run_dir}") for ln in printed)
    assert any(ln.startswith("after 2 rounds: answer tokens right") for ln in printed)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tasks = [r for r in records if r["kind"] == "task"]
    rounds = [r for r in records if r["kind"] == "round"]
    baseline = [r for r in records if r["kind"] == "baseline"]
    assert len(baseline) == 1 and len(rounds) == 2
    assert sorted((t["round"], t["site"]) for t in tasks) == [
        (1, "east"),
        (1, "west"),
        (2, "east"),
        (2, "west"),
    ]
    assert all(t["status"] == "ok" for t in tasks)
    # each site trained on its own partition (non-IID: different sample counts are fine, both non-empty)
    assert all(t["num_samples"] > 0 for t in tasks)
    # the base model stays loaded in each site's worker: round 2 is a cache hit
    assert all(t["cache_hit"] for t in tasks if t["round"] == 2)
    assert all(t["bytes_up"] > 0 for t in tasks) and all(
        t["bytes_down"] > 0 for t in tasks if t["round"] == 2
    )
    for r in rounds:
        assert r["val_loss"] == pytest.approx(r["val_loss"]) and r["val_loss"] > 0  # finite
    # run directory: resolved experiment, partitions, checkpoint, final adapter (peft layout), plots
    assert yaml.safe_load((run_dir / "experiment.yaml").read_text())["name"] == "two-sites"
    assert (run_dir / "data" / "east.jsonl").is_file() and (
        run_dir / "data" / "west.jsonl"
    ).is_file()
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["round"] == 2
    images = json.loads((run_dir / "site_images.json").read_text())
    assert images["east"] == {
        "site": "local",
        "runtime": "none",
        "arch": "cpu",
        "image": None,
        "digest": None,
    }
    assert (run_dir / "loss_vs_time.png").stat().st_size > 0
    assert (run_dir / "site_timeline.png").stat().st_size > 0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(project / "model")
    model = PeftModel.from_pretrained(base, run_dir / "final_adapter")
    assert any("lora_A" in name for name, _ in model.named_parameters())

    left = [psutil.Process(pid) for pid in children() - before if psutil.pid_exists(pid)]
    _, alive = psutil.wait_procs(left, timeout=15)
    assert not alive, "engine processes left behind"


def test_failing_sites_fail_the_run_but_keep_its_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    bad = project / "data" / "broken.jsonl"
    bad.write_text('{"input": "x"}\nnot json\n')
    exp, path = load_experiment(
        experiment_file(
            project,
            name="broken",
            rounds=1,
            sites=[{"name": "east", "site": "local", "data_path": str(bad)}],
        )
    )
    with pytest.raises(RunFailed, match="no site returned an update"):
        run_experiment(exp, path, Console(width=120))
    run_dir = next((project / "runs").glob("broken-*"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    failed = [r for r in records if r["kind"] == "task"]
    assert failed and failed[0]["status"] == "failed" and "line" in failed[0]["error"]
    assert (run_dir / "experiment.yaml").is_file()


def test_a_site_whose_worker_holds_two_devices_trains_on_both(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`local` hands its one worker the whole machine (endpoint.tasks: per-node); with
    ranks_per_node 2 each of its tasks runs two CPU ranks (gloo) that return one adapter, which
    FedAvg aggregates with the other site's, round after round; the report says so."""
    from crossfl.server.report import summary_tables

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    exp, path = load_experiment(
        experiment_file(
            project,
            name="two-ranks",
            sites=[
                {"name": "east", "site": "local", "ranks_per_node": 2},
                {"name": "west", "site": "local"},
            ],
        )
    )
    run_dir = run_experiment(exp, path, Console(width=120, record=True))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tasks = {(t["round"], t["site"]): t for t in records if t["kind"] == "task"}
    assert sorted(tasks) == [(1, "east"), (1, "west"), (2, "east"), (2, "west")]
    assert all(t["status"] == "ok" for t in tasks.values())
    for rnd in (1, 2):
        east, west = tasks[(rnd, "east")], tasks[(rnd, "west")]
        assert (east["ranks"], east["dist_backend"], east["devices_held"]) == (2, "gloo", 2)
        assert (west["ranks"], west.get("dist_backend"), west["devices_held"]) == (1, None, 1)
        assert len(east["device_names"]) == 2 and 0 < east["device_busy"] <= 1
        assert east["num_samples"] > 0 and east["node_hours"] > 0
    aggregations = [r for r in records if r["kind"] == "aggregation"]
    assert [sorted(a["sites"]) for a in aggregations] == [["east", "west"]] * 2
    assert len([r for r in records if r["kind"] == "round"]) == 2
    out = Console(width=80, record=True)
    for table in summary_tables(run_dir):
        out.print(table)
    lines = out.export_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if "allocation" in ln)
    rows = {
        ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[2:-1]]
        for ln in lines[start : start + 8]
        if ln.startswith("│")
    }
    assert rows["east"][:3] == ["1", "2", "2"] and rows["west"][:3] == ["1", "1", "1"]
    assert max(len(ln) for ln in lines[start:]) <= 80


def test_the_queue_aware_policy_runs_a_real_federation(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dispatch: queue-aware` in an experiment file, on real local engines: the run finishes,
    every task ran the steps the policy allowed, and its decisions are in metrics.jsonl; for a
    site with pilot jobs it renders the warm-pilot idle settings into the endpoint config."""
    from crossfl.server.experiment import Experiment
    from crossfl.server.plan import plan_site

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    dispatch = {"name": "queue-aware", "expected_wait_s": {"east": 900, "west": 60}}
    exp, path = load_experiment(experiment_file(project, name="queue-aware", dispatch=dispatch))
    run_dir = run_experiment(exp, path, Console(width=120))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    decisions = {r["site"]: r for r in records if r["kind"] == "dispatch"}
    assert set(decisions) == {"east", "west"}
    assert decisions["east"]["detail"]["expected_wait_s"] == 900
    tasks = [r for r in records if r["kind"] == "task"]
    assert len(tasks) == 4 and all(t["status"] == "ok" and t["steps"] == 3 for t in tasks)
    # a batch site: the warm pilot is in the config the endpoint would load
    raw = yaml.safe_load(path.read_text())
    raw["sites"] = [
        {"name": "east", "site": "local-slurm", "user_options": {"walltime": "00:20:00"}},
        raw["sites"][1],
    ]
    plan = plan_site(Experiment.model_validate(raw), "east")
    # kept idle as long as a new pilot would wait (900 s), under the 20 min walltime
    assert plan.user_options["max_idletime"] == 900.0
    assert plan.user_options["idle_heartbeats_soft"] == 32
    assert plan.engine_config.engine._job_status_kwargs["max_idletime"] == 900.0


def test_the_server_process_never_loads_the_training_stack(project: Path) -> None:
    """A whole run (baseline, a round, the final adapter in peft's layout) in a process of its
    own: the sites' workers train with peft and transformers; the server imports neither."""
    import os
    import subprocess
    import sys

    path = experiment_file(
        project, name="lean-server", rounds=1, sites=[{"name": "east", "site": "local"}]
    )
    code = (
        "import json, sys\n"
        "from crossfl.server.experiment import load_experiment\n"
        "from crossfl.server.lifecycle import run_experiment\n"
        "exp, path = load_experiment(sys.argv[1])\n"
        "run_dir = run_experiment(exp, path)\n"
        "print(json.dumps([str(run_dir), sorted(m for m in ('peft', 'transformers') "
        "if m in sys.modules)]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "CROSSFL_ROOT": str(project)},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir, heavy = json.loads(proc.stdout.splitlines()[-1])
    assert heavy == []
    config = json.loads((Path(run_dir) / "final_adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
