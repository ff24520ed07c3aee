"""Orchestration overhead of the round driver, and warm rounds, on the real local engine.

1. No-op client task (``crossfl.client.probes.noop_train``: no model, no data) at three
   local sites, synchronous FedAvg: everything a round costs beyond client compute is the
   server's and the engine's (payload packing, dispatch to the worker, result unpacking,
   screening, aggregation). Per round:
   ``overhead = (aggregation done - first submit) - longest client task on its worker``,
   reported in ms per round, ms per task, and as a fraction of the round.
2. The tiny Llama (built here, as tests/test_federation.py does) at two local sites: the same
   split with real LoRA training, and the base-model load time per round from the task records
   (``load_s``, ``cache_hit``): round 1 loads the model, rounds 2+ find it in the worker's cache.
   (The baseline evaluation already warmed the evaluating site, so round 1 shows 50% hits; most
   of round 1's extra time is the fresh worker importing torch/transformers, before load_s.)

Evaluation and checkpoint writing happen after the aggregation and are not in the round time.
No assertions: the figures are printed in a rich table.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from testkit.scratch_project import make_project, write_experiment

from crossfl.client import probes
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import run_experiment
from crossfl.server.records import AggregationRecord, TaskRecord
from crossfl.server.telemetry import live_records, of_kind
from crossfl.server.transport import TaskFns
from crossfl.tables import fit

ROOT = Path(__file__).resolve().parents[1]
NOOP_ROUNDS = 10
TINY_ROUNDS = 4


def experiment(root: Path, name: str, sites: int, rounds: int, **changes: Any) -> Path:
    training = {
        "local_steps": 5,
        "batch_size": 4,
        "lr": 0.005,
        "max_length": 96,
        "torch_threads": 1,
    }
    return write_experiment(
        root,
        name,
        sites=[{"name": f"site{i}", "site": "local"} for i in range(sites)],
        rounds=rounds,
        training=training,
        **changes,
    )


def round_split(run_dir: Path) -> list[dict[str, float]]:
    """Per round: wall (first submit -> aggregated), longest client compute, tasks, overhead."""
    records = live_records(run_dir / "metrics.jsonl")
    tasks = [t for t in of_kind(records, TaskRecord) if t.status == "ok"]
    rows = []
    for agg in of_kind(records, AggregationRecord):
        mine = [t for t in tasks if t.round == agg.round]
        wall = agg.elapsed_s - min(t.submitted_rel_s for t in mine)
        compute = max(t.worker_s or 0.0 for t in mine)
        rows.append(
            {
                "round": agg.round,
                "wall": wall,
                "compute": compute,
                "tasks": len(mine),
                "overhead": max(0.0, wall - compute),
                "load": statistics.mean(t.load_s or 0.0 for t in mine),
                "hits": sum(1 for t in mine if t.cache_hit) / len(mine),
            }
        )
    return rows


def run(root: Path, path: Path, fns: TaskFns | None = None) -> Path:
    exp, exp_path = load_experiment(path)
    return run_experiment(exp, exp_path, Console(file=io.StringIO(), width=120), fns=fns)


def overhead_table(runs: dict[str, list[dict[str, Any]]]) -> Table:
    """What the server and the engine add per round, one column per client task (its warm
    rounds: round 1 is cold), one row per measure: fits 80 columns."""
    table = Table(
        title="orchestration overhead per round (local engine; round = first submit -> "
        "aggregated; medians over the warm rounds)"
    )
    table.add_column("measure")
    for label in runs:
        table.add_column(label, justify="right")

    def median(key: str, rows: list[dict[str, Any]], scale: float = 1e3) -> float:
        return statistics.median(r[key] for r in rows) * scale

    measures = {
        "rounds": lambda rows: f"2-{len(rows) + 1}",
        "tasks per round": lambda rows: str(rows[0]["tasks"]),
        "round (ms)": lambda rows: f"{median('wall', rows):.1f}",
        "site compute (ms)": lambda rows: f"{median('compute', rows):.1f}",
        "overhead (ms per round)": lambda rows: f"{median('overhead', rows):.1f}",
        "overhead (ms per task)": lambda rows: (
            f"{statistics.median(r['overhead'] / r['tasks'] for r in rows) * 1e3:.1f}"
        ),
        "overhead / round": lambda rows: (
            f"{median('overhead', rows) / median('wall', rows):.1%}"
            if median("wall", rows)
            else "-"
        ),
    }
    for name, cell in measures.items():
        table.add_row(name, *(cell(rows) if rows else "-" for rows in runs.values()))
    return fit(table)


def warm_table(tiny: list[dict[str, Any]]) -> Table:
    """Per round of the tiny-model run: the base-model load (a cache hit from round 2)."""
    warm = Table(title="warm rounds: base-model load per round (tiny Llama, mean over sites)")
    for col in ("round", "load (s)", "cache hits", "round (s)", "compute (s)", "beyond (s)"):
        warm.add_column(col, justify="right")
    for r in tiny:
        warm.add_row(
            str(r["round"]),
            f"{r['load']:.3f}",
            f"{r['hits']:.0%}",
            f"{r['wall']:.2f}",
            f"{r['compute']:.2f}",
            f"{r['overhead']:.2f}",
        )
    warm.caption = "beyond: the round's time beyond the sites' compute"
    return fit(warm)


def main() -> None:
    console = Console()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        root = Path(tmp)
        before = os.environ.get("CROSSFL_ROOT")
        os.environ["CROSSFL_ROOT"] = str(root)
        try:
            make_project(root, ROOT)
            noop = round_split(
                run(
                    root,
                    experiment(root, "noop", 3, NOOP_ROUNDS, transport={"mode": "inline"}),
                    TaskFns(train=probes.noop_train, evaluate=probes.noop_evaluate),
                )
            )
            tiny = round_split(run(root, experiment(root, "tiny", 2, TINY_ROUNDS)))
        finally:
            if before is None:
                os.environ.pop("CROSSFL_ROOT", None)
            else:
                os.environ["CROSSFL_ROOT"] = before

    console.print(overhead_table({"no-op": noop[1:], "tiny Llama LoRA": tiny[1:]}))
    console.print(warm_table(tiny))
    later = [r["load"] for r in tiny[1:]]
    if tiny and later and tiny[0]["load"] > 0:
        console.print(
            f"model load, rounds 2+ / round 1: {statistics.median(later) / tiny[0]['load']:.2f} "
            f"(round 1 {tiny[0]['load']:.3f} s, rounds 2+ median {statistics.median(later):.4f} s); "
            f"round 1 beyond compute {tiny[0]['overhead']:.2f} s (worker start: importing torch and "
            f"transformers, first model load) vs rounds 2+ median "
            f"{statistics.median(r['overhead'] for r in tiny[1:]):.3f} s"
        )
    console.print(f"bench_orchestration took {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
