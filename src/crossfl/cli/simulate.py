"""`crossfl simulate EXP --queues SCENARIO [--seeds N]` and `--calibrate RUN...`."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crossfl.errors import UserError


def simulate_command(
    experiment: Annotated[
        str | None, typer.Argument(help="experiment file, or a name in deploy/experiments/")
    ] = None,
    queues: Annotated[
        Path | None,
        typer.Option("--queues", help="queue scenario, e.g. deploy/queues/high-variance.yaml"),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="replays, queue seeds 0..N-1")] = 1,
    calibrate: Annotated[
        list[Path] | None,
        typer.Option("--calibrate", help="fit a scenario to these runs' metrics.jsonl instead"),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="FedAvg, FedAsync, FedBuff, FedCompass, FedQueue and ours, tuned on "
            "seeds apart, paired by seed: time and node-hours to a target loss, BCa intervals",
        ),
    ] = False,
    reproduce: Annotated[
        bool,
        typer.Option(
            "--reproduce",
            help="with --compare: FedAvg, FedAsync and FedQueue at APPFL's own queue-example "
            "parameters (FedQueue reproduced first)",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="worker processes for --compare (default: CPUs)"),
    ] = None,
    horizon_h: Annotated[
        float | None,
        typer.Option("--horizon-h", min=0.01, help="virtual hours every --compare run may take"),
    ] = None,
    work_unit: Annotated[
        int | None,
        typer.Option(
            "--work-unit",
            min=1,
            help="facility steps one replayed step stands for (default 60; --reproduce 1)",
        ),
    ] = None,
    task_timeout: Annotated[
        float,
        typer.Option(
            "--task-timeout",
            min=1,
            help="seconds a task may take from submission, its queue wait "
            "included (virtual time); replaces the experiment's",
        ),
    ] = 12 * 3600,
    out: Annotated[
        Path, typer.Option("--out", help="where --calibrate writes its scenario")
    ] = Path("build/queues/calibrated.yaml"),
) -> None:
    """Replay an experiment in virtual time against facility queues (real drivers, strategy
    and training; simulated queue waits, pilots, speeds and transfers)."""
    console = Console()
    if calibrate or compare:  # a censored fit and the paired bootstrap: scipy
        from crossfl.extras import require

        require("sim", "crossfl simulate --calibrate / --compare")
    if calibrate:
        from crossfl.simulate.calibrate import write_scenario

        for line in write_scenario(list(calibrate), out):
            console.print(line)
        console.print(f"scenario written to {out}")
        return
    if experiment is None or queues is None:
        raise UserError(
            "give an experiment and --queues SCENARIO (or --calibrate RUN...)",
            field="crossfl simulate",
            fix="e.g. `crossfl simulate local-demo --queues deploy/queues/high-variance.yaml`",
        )
    from crossfl.server.experiment import load_experiment
    from crossfl.simulate.replay import replay_seeds
    from crossfl.simulate.scenario import load_scenario

    exp, path = load_experiment(experiment)
    scenario = load_scenario(queues)
    if compare:
        from datetime import datetime

        from crossfl.paths import runs_dir
        from crossfl.simulate.compare import run_comparison, tables

        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out_dir = runs_dir() / f"compare-{exp.name}-{scenario.name}-{stamp}"
        result = run_comparison(
            exp,
            path,
            scenario,
            queues,
            seeds,
            console,
            out_dir,
            task_timeout,
            reproduce=reproduce,
            workers=workers,
            horizon_h=horizon_h,
            work_unit=work_unit,
        )
        for table in tables(result):
            console.print(table)
        console.print(result.verdict(), highlight=False)
        console.print(
            f"{result.replays} replays run here in {result.wall_s / 60:.1f} min "
            f"({result.replay_wall_s / max(1, result.replays):.1f} s of one worker each)",
            highlight=False,
        )
        console.print(f"plot and figures: {out_dir}")
        return
    done = replay_seeds(exp, path, scenario, queues, seeds, console, task_timeout)
    table = Table(title=f"{exp.name} against {scenario.name}: {len(done)} replay(s)")
    for col in ("seed", "virtual time (h)", "node-hours", "run directory"):
        table.add_column(col, justify="left" if col == "run directory" else "right")
    for r in done:
        table.add_row(
            str(r.seed), f"{r.virtual_s / 3600:.2f}", f"{r.node_hours:.2f}", r.run_dir.name
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
