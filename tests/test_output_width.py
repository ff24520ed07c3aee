"""Every table the CLI prints reads in 80 columns: `crossfl sites`, `crossfl status`, the run
summary and `crossfl report` (with the same tables whole in the run's report.txt), and
`make bench`'s tables. Each is rendered by rich at width 80: no line is longer, no cell is cut
("…"), and every site name appears whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from crossfl.server.records import AggregationRecord, EvalRecord, TaskRecord
from crossfl.server.telemetry import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
LONG_SITES = ["local-slurm-mpi-east", "perlmutter-shared-queue", "gamma"]


def render(*renderables: Any) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for r in renderables:
        console.print(r)
    return console.export_text()


def assert_fits(text: str, names: list[str]) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "…" not in text, text
    for name in names:
        assert any(name in line for line in lines), f"{name} cut: {text}"


def evaluation(kind: str, rnd: int, loss: float, right: int, at: float) -> EvalRecord:
    return EvalRecord(
        kind=kind,  # type: ignore[arg-type]
        round=rnd,
        val_loss=loss,
        answer_tokens={"name_conversion-s2f": (right, 100), "property_prediction-mw": (right, 80)},
        exact_match={"name_conversion-s2f": 0.0},
        started_s=at - 3.0,
        elapsed_s=at,
        strategy="fedavg",
        version=rnd,
        updates=3 * rnd,
        bytes_down=1000,
        transport="inline",
        driver="sync",
    )


def task(rnd: int, site: str, at: float) -> TaskRecord:
    return TaskRecord(
        round=rnd,
        site=site,
        status="ok",
        submitted_at=1e9 + at,
        received_at=1e9 + at + 5,
        submitted_rel_s=at,
        bytes_down=400_000 if rnd > 1 else 0,
        bytes_up=400_000,
        transport="inline",
        transport_up="inline",
        attempts=1,
        base_version=rnd - 1,
        local_steps=20,
        num_samples=7698,
        ranks=1,
        nodes_used=1,
        devices_per_rank=1,
        device_type="cpu",
        devices_held=1,
        device_busy=0.9,
        node_hours=0.002,
        queue_s=0.5,
        load_s=1.0,
        train_s=3.0,
        transfer_s=0.1,
        worker_s=4.0,
        train_loss=1.0,
    )


def write_run(
    run_dir: Path,
    rounds: int = 3,
    done: int = 3,
    finished: bool = True,
    sites: list[str] = LONG_SITES,
) -> Path:
    """A run directory as a run leaves it: experiment.yaml, metrics.jsonl, checkpoint meta."""
    run_dir.mkdir(parents=True)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump({"name": "w", "rounds": rounds}))
    log = MetricsLog(run_dir / "metrics.jsonl")
    log.write(evaluation("baseline", 0, 2.18, 20, 10.0))
    for rnd in range(1, done + 1):
        start = 10.0 + 20 * (rnd - 1)
        for site in sites:
            log.write(task(rnd, site, start))
        log.write(
            AggregationRecord(
                round=rnd,
                version=rnd,
                driver="sync",
                sites=sites,
                started_s=start + 6,
                elapsed_s=start + 6.01,
                staleness=dict.fromkeys(sites, 0),
            )
        )
        log.write(evaluation("round", rnd, 2.18 - 0.3 * rnd, 20 + 10 * rnd, start + 9))
    (run_dir / "checkpoint").mkdir()
    meta = {"round": done, "version": done, "updates": 3 * done, "finished": finished}
    (run_dir / "checkpoint" / "state.json").write_text(json.dumps(meta))
    return run_dir


def test_the_run_summary_and_report_fit_80_columns(tmp_path: Path) -> None:
    from crossfl.server.report import print_report

    run_dir = write_run(tmp_path / "runs" / "w-20261207-120000")
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_report(run_dir, console)
    text = console.export_text()
    assert_fits(text, LONG_SITES)
    assert "answer tokens" in text and "formula tokens" in text and "allocation" in text
    assert "device type" not in text  # left out for the long names; kept in report.txt
    kept = (run_dir / "report.txt").read_text()
    assert all(name in kept for name in LONG_SITES) and "device type" in kept
    short = write_run(tmp_path / "runs" / "short", sites=["east", "west"])
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_report(short, console)
    assert "device type" in console.export_text()  # nothing is left out where all fits


def test_the_sites_table_fits_80_columns_with_every_name_whole() -> None:
    from crossfl.cli.sites import sites_table
    from crossfl.sites import list_sites, load_site

    names = list_sites()
    assert "local-slurm-mpi" in names
    text = render(sites_table([load_site(n) for n in names]))
    assert_fits(text, names)
    assert any(
        "frontier" in ln and "8 rocm" in ln and "apptainer" in ln for ln in text.splitlines()
    )


def test_status_rows_fit_80_columns_and_keep_long_values_whole() -> None:
    from crossfl.deploy.flow import _print_rows

    long_path = "/lustre/orion/abc123/scratch/someone/crossfl/images/crossfl-rocm.sif"
    rows = {
        "site": "frontier",
        "image": f"{long_path} sha256:0123456789ab (build)",
        "pilot jobs": "JOBID PARTITION NAME\n  123 batch crossfl",
    }
    console = Console(width=80, record=True, soft_wrap=True, file=open("/dev/null", "w"))  # noqa: SIM115
    _print_rows(console, rows)
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.strip() == long_path for line in lines)  # whole, on a line of its own
    assert "site frontier" in " ".join(lines[0].split())
    assert any("123 batch crossfl" in line for line in lines)


@pytest.fixture
def bench() -> Any:
    """The benchmark modules (importable from the checkout: benchmarks/ is a package)."""
    import benchmarks.bench_aggregation as aggregation
    import benchmarks.bench_orchestration as orchestration
    import benchmarks.bench_scaling as scaling

    return aggregation, orchestration, scaling


def test_the_bench_tables_fit_80_columns(bench: Any) -> None:
    aggregation, orchestration, scaling = bench
    t = aggregation.Timing(620.5, 600.1)
    title = (
        "FedAvg of 8 clients x LoRA r=16 on q,k,v,o of 32 layers (hidden 4096): "
        "16,777,216 params = 67.1 MB fp32 each; torch threads 2, 2 cpus, load average 6.5"
    )
    rows = [
        ("APPFL 1.12 FedAvgAggregator (dict of tensors)", t, "26.0x crossfl", "met: >= 10x"),
        ("crossfl fedavg (flat buffers)", t, "1.0x", ""),
        ("torch.mean over one (8, 16777216) buffer", t, "crossfl 1.31x", "met: within 2x"),
    ]
    text = render(aggregation.results_table(title, rows))
    assert_fits(text, ["median ms", "best ms", "ratio", "goal"])
    rounds = [
        {"round": r, "wall": 0.05, "compute": 0.04, "overhead": 0.01, "tasks": 3, "load": 0.1}
        for r in range(2, 7)
    ]
    text = render(orchestration.overhead_table({"no-op": rounds, "tiny Llama LoRA": rounds[:2]}))
    assert_fits(text, ["overhead (ms per round)", "overhead (ms per task)", "tiny Llama LoRA"])
    warm = [{**r, "hits": 1.0} for r in rounds]
    assert_fits(render(orchestration.warm_table(warm)), ["cache hits", "compute (s)"])
    run = {
        "train_tokens": 123_456,
        "timings": {"train_s": 12.5},
        "accelerator_s": 20.0,
        "train_window_s": 12.8,
        "wall_s": 14.0,
        "ranks": 2,
    }
    text = render(scaling.scaling_table([("cpu", {**run, "ranks": 1}), ("cpu", run)]))
    assert_fits(text, ["tok/s/rank", "scaling", "busy"])


def test_each_evaluation_line_says_what_a_chemist_reads() -> None:
    """The console line of the untrained evaluation and of each round's: loss and answer
    tokens right (short enough for the round line to fit 80 columns)."""
    r = evaluation("round", 1, 1.0, 30, 5.0)
    assert r.headline() == "val loss 1.0000, answer tokens 33%"
    line = f"round 5/5: 3/3 updates, {r.headline()}, 115 s, 3.65 MB moved"
    assert len(line) <= 80
    bare = r.model_copy(update={"answer_tokens": {}})
    assert bare.headline() == "val loss 1.0000" and bare.answer_accuracy() is None
