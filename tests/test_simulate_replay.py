"""`crossfl simulate`: the real drivers and strategies, real training on a tiny model, each site
an endpoint whose pilots wait in a simulated queue, in virtual time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from testkit.scratch_project import make_project, write_experiment

from crossfl.server.experiment import load_experiment
from crossfl.simulate.replay import replay_seeds
from crossfl.simulate.scenario import load_scenario

pytestmark = pytest.mark.slow  # replays with real training (`make test-fast` leaves them out)

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = {
    "name": "two-queues",
    "seed": 0,
    "facilities": {
        "fast": {"queues": {"q": {"wait": {"model": "fixed", "wait_s": 60, "assumption": "test"}}}},
        "slow": {
            "queues": {
                "q": {
                    "wait": {
                        "model": "lognormal",
                        "median_s": 3000,
                        "p90_s": 9000,
                        "assumption": "test",
                    }
                }
            }
        },
    },
    "sites": [
        {
            "name": "east",
            "facility": "fast",
            "queue": "q",
            "speed": {
                "seconds_per_step": 5,
                "load_cold_s": 30,
                "load_warm_s": 1,
                "assumption": "test",
            },
        },
        {
            "name": "west",
            "facility": "slow",
            "queue": "q",
            "speed": {
                "seconds_per_step": 5,
                "load_cold_s": 30,
                "load_warm_s": 1,
                "assumption": "test",
            },
        },
    ],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("replay"), ROOT, molecules=120, pretrain_steps=5)


def records(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_replays_are_deterministic_and_pay_the_queue(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    exp, path = load_experiment(write_experiment(project, "replay", rounds=2))
    scenario_file = project / "queues.yaml"
    scenario_file.write_text(yaml.safe_dump(SCENARIO))
    scenario = load_scenario(scenario_file)
    first, second = (
        replay_seeds(exp, path, scenario, scenario_file, 1, Console(width=80))[0] for _ in range(2)
    )
    a, b = (records(r.run_dir, "task") for r in (first, second))
    keys = ("round", "site", "status", "submitted_rel_s", "queue_s", "train_loss")
    assert [[t.get(k) for k in keys] for t in a] == [[t.get(k) for k in keys] for t in b]
    assert all(t["status"] == "ok" for t in a) and len(a) == 4
    pilots = records(first.run_dir, "pilot")
    waits = {p["site"]: p["queue_wait_s"] for p in pilots if p["block"] == 0}
    assert waits["east"] == 60  # the fixed queue
    # each site's first task waited for its pilot, then for its model to load (cold)
    first_tasks = {t["site"]: t for t in a if t["round"] == 1}
    for site, wait in waits.items():
        assert first_tasks[site]["queue_s"] >= wait
        assert first_tasks[site]["load_s"] == 30
    # the round ended when the slower site's pilot had started and its task had run
    aggregation = records(first.run_dir, "aggregation")[0]
    assert aggregation["elapsed_s"] >= max(waits.values()) + 30 + 2 * 5
    sim = records(first.run_dir, "simulation")[0]
    assert sim["profiles"] == {"east": "east", "west": "west"}
    assert sim["node_hours"] == pytest.approx(sum(p["node_hours"] for p in pilots))
    assert second.virtual_s == first.virtual_s
    # the second replay trained nothing: every task's inputs were identical
    again = records(second.run_dir, "simulation")[0]
    assert sim["cache_misses"] > 0 and again["cache_misses"] == 0 and again["cache_hits"] > 0
    assert (first.run_dir / "loss_vs_time.png").is_file()


def test_a_bad_scenario_is_one_line_before_anything_is_written(project: Path) -> None:
    bad = project / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({**SCENARIO, "sites": [{**SCENARIO["sites"][0], "queue": "nope"}]})
    )
    before = set((project / "runs").glob("*")) if (project / "runs").exists() else set()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossfl",
            "simulate",
            str(write_experiment(project, "replay-bad")),
            "--queues",
            str(bad),
        ],
        capture_output=True,
        text=True,
        cwd=project,
        env={**__import__("os").environ, "CROSSFL_ROOT": str(project)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "nope" in lines[0] and "fix:" in lines[0]
    after = set((project / "runs").glob("*")) if (project / "runs").exists() else set()
    assert after == before


def short_pilots(walltime: str) -> dict[str, Any]:
    site = {
        "facility": "fast",
        "queue": "q",
        "pilot": {"walltime": walltime, "assumption": "test"},
        "speed": {
            "seconds_per_step": 20,
            "load_cold_s": 30,
            "load_warm_s": 1,
            "assumption": "test",
        },
    }
    return {
        **SCENARIO,
        "name": "short-pilots",
        "facilities": {"fast": SCENARIO["facilities"]["fast"]},
        "sites": [{"name": "east", **site}, {"name": "west", **site}],
    }


@pytest.mark.parametrize("policy", ["eager", "queue-aware"])
def test_queue_aware_fits_a_task_into_the_walltime_left(
    project: Path, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pilots of 270 s, 20 s steps: the second round's 6 steps do not fit the first pilot.
    Eager loses that task to the walltime; queue-aware shortens it to what is left."""
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    exp, path = load_experiment(
        write_experiment(
            project,
            f"fit-{policy}",
            rounds=2,
            training={
                "local_steps": 6,
                "batch_size": 4,
                "lr": 0.005,
                "max_length": 96,
                "torch_threads": 1,
            },
            dispatch={"name": policy, "walltime_margin_s": 0},
        )
    )
    scenario_file = project / "short.yaml"
    scenario_file.write_text(yaml.safe_dump(short_pilots("00:04:30")))
    run = replay_seeds(
        exp,
        path,
        scenario_file and load_scenario(scenario_file),
        scenario_file,
        1,
        Console(width=80),
    )[0]
    second = [t for t in records(run.run_dir, "task") if t["round"] == 2]
    ends = {p["site"]: p["end_reason"] for p in records(run.run_dir, "pilot") if p["block"] == 0}
    if policy == "eager":
        assert set(ends.values()) == {"walltime"}
        assert all(t["steps"] == 6 and t["simulated"]["block"] == 1 for t in second)
    else:
        shortened = [d for d in records(run.run_dir, "dispatch") if d["action"] == "shorten"]
        assert {d["site"] for d in shortened} == {"east", "west"}
        assert all(t["steps"] < 6 and t["simulated"]["block"] == 0 for t in second)


def test_queue_aware_keeps_pilots_warm_where_the_queue_is_slow(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sites queue for about 50 min: under eager dispatch the site whose pilot starts first
    idles past the engine's 120 s while the other waits, loses its pilot and queues again next
    round; queue-aware keeps both warm, and reaches the same rounds sooner, for node-hours."""
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    slow = {
        **SCENARIO,
        "name": "both-slow",
        "sites": [{**s, "facility": "slow"} for s in SCENARIO["sites"]],
    }
    scenario_file = project / "slow.yaml"
    scenario_file.write_text(yaml.safe_dump(slow))
    runs = {}
    for policy in ("eager", "queue-aware"):
        exp, path = load_experiment(
            write_experiment(project, f"warm-{policy}", rounds=3, dispatch={"name": policy})
        )
        runs[policy] = replay_seeds(
            exp, path, load_scenario(scenario_file), scenario_file, 1, Console(width=80)
        )[0]
    ends = {k: [p["end_reason"] for p in records(r.run_dir, "pilot")] for k, r in runs.items()}
    assert "idle" in ends["eager"] and "idle" not in ends["queue-aware"]
    assert len(ends["queue-aware"]) < len(ends["eager"])
    decisions = records(runs["queue-aware"].run_dir, "dispatch")
    assert {d["site"]: d["action"] for d in decisions} == {"east": "keep-warm", "west": "keep-warm"}
    assert runs["queue-aware"].virtual_s < runs["eager"].virtual_s


@pytest.mark.parametrize("strategy", ["fedavg", "fedasync"])
def test_a_run_ends_at_its_target_loss(
    project: Path, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop_at_loss: the first evaluation at or under it ends the run (both drivers)."""
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    exp, path = load_experiment(
        write_experiment(
            project, f"stop-{strategy}", rounds=4, strategy={"name": strategy}, stop_at_loss=1000.0
        )
    )
    scenario_file = project / "queues.yaml"
    scenario_file.write_text(yaml.safe_dump(SCENARIO))
    run = replay_seeds(
        exp, path, load_scenario(scenario_file), scenario_file, 1, Console(width=80)
    )[0]
    evals = records(run.run_dir, "round")
    assert len(evals) == 1 and evals[0]["val_loss"] <= 1000.0


def test_fedqueue_rounds_close_on_its_timer_while_a_site_is_still_out(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """APPFL's FedQueue scheduler aggregates when every client's update is in, or on its timer
    ((1 + admission_tolerance) t_sync after the last aggregation). west's pilot waits 50 min,
    so every round closes on the timer: 230 s apart, not as soon as east alone is back (the
    rule for every strategy before: about 1.5x APPFL's round rate)."""
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    slow = {
        **SCENARIO,
        "name": "one-late",
        "facilities": {
            **SCENARIO["facilities"],
            "slow": {
                "queues": {"q": {"wait": {"model": "fixed", "wait_s": 3000, "assumption": "t"}}}
            },
        },
    }
    scenario_file = project / "one-late.yaml"
    scenario_file.write_text(yaml.safe_dump(slow))
    exp, path = load_experiment(
        write_experiment(
            project,
            "fedqueue-timer",
            rounds=4,
            strategy={
                "name": "fedqueue",
                "kwargs": {"t_sync": 200, "theta": 10, "warm_up_steps": 2, "max_local_steps": 3},
            },
        )
    )
    run = replay_seeds(
        exp, path, load_scenario(scenario_file), scenario_file, 1, Console(width=80), 43200
    )[0]
    aggs = records(run.run_dir, "aggregation")
    assert [a["sites"] for a in aggs] == [["east"]] * 4
    gaps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(aggs, aggs[1:], strict=False)]
    assert gaps == [pytest.approx(230.0)] * 3
    first = next(t for t in records(run.run_dir, "task") if t["site"] == "east")
    assert aggs[0]["elapsed_s"] == pytest.approx(first["received_at"] + 230.0)


def test_a_comparison_tunes_apart_runs_over_workers_and_resumes(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The comparison end to end on the tiny model: the target from FedAvg with no queue,
    FedQueue's candidates tried on the tuning seeds only, evaluation seeds over two worker
    processes, every outcome kept: run again, nothing is replayed."""
    from crossfl.simulate.compare import TUNING_SEEDS, Variant, run_comparison

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    exp, path = load_experiment(write_experiment(project, "cmp", rounds=2))
    scenario_file = project / "queues.yaml"
    scenario_file.write_text(yaml.safe_dump(SCENARIO))
    variants = (
        Variant("fedavg", "fedavg"),
        Variant("fedqueue", "fedqueue", ({"t_sync": 400}, {"t_sync": 1200})),
    )

    def compare(out: str) -> Any:
        return run_comparison(
            exp,
            path,
            load_scenario(scenario_file),
            scenario_file,
            2,
            Console(width=80, quiet=True),
            tmp_path / out,
            43200,
            workers=2,
            horizon_h=24,
            work_unit=1,
            variants=variants,
        )

    first = compare("one")
    assert first.replays == 1 + 2 * len(TUNING_SEEDS) + 2 * 2  # reference, tuning, seeds
    assert [o.seed for o in first.outcomes["fedqueue"]] == [0, 1]
    assert first.chosen["fedqueue"] in variants[1].grid
    assert {kw["t_sync"] for kw, _ in first.tuning["fedqueue"]} == {400, 1200}
    assert first.verdict().startswith("no verdict")
    saved = json.loads((tmp_path / "one" / "comparison.json").read_text())
    assert set(saved["outcomes"]) == {"fedavg", "fedqueue"}
    assert (tmp_path / "one" / "loss_vs_time.png").is_file()
    again = compare("two")
    assert again.replays == 0
    assert [o.time_s for o in again.outcomes["fedqueue"]] == [
        o.time_s for o in first.outcomes["fedqueue"]
    ]
