"""`crossfl run EXP`, `crossfl resume RUN` and `crossfl report RUN [RUN ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from crossfl.errors import UserError
from crossfl.paths import project_root, runs_dir


def latest_runs(count: int = 3) -> list[str]:
    """The names of the newest run directories, newest first (by when each was created: its
    experiment.yaml is written once, when the run starts)."""
    runs = [p for p in runs_dir().glob("*") if (p / "experiment.yaml").is_file()]
    runs.sort(key=lambda p: (p / "experiment.yaml").stat().st_mtime, reverse=True)
    return [p.name for p in runs[:count]]


def resolve_run_dir(ref: str) -> Path:
    path = Path(ref)
    for candidate in (path, project_root() / path, runs_dir() / ref):
        if (candidate / "metrics.jsonl").is_file() or (candidate / "experiment.yaml").is_file():
            return candidate
    known = latest_runs()
    raise UserError(
        f"no run directory {ref!r}",
        fix=f"give a path under {runs_dir()}; the latest: {', '.join(known)}"
        if known
        else f"no run under {runs_dir()} yet",
    )


StopAfter = Annotated[
    int | None,
    typer.Option(
        "--stop-after",
        min=1,
        help="stop once this round (async: aggregation) is checkpointed; `crossfl resume` continues",
    ),
]


def run_command(
    experiment: Annotated[
        str, typer.Argument(help="experiment file, or a name in deploy/experiments/")
    ],
    stop_after: StopAfter = None,
) -> None:
    """Run an experiment: federated rounds across its sites."""
    from crossfl.server.experiment import load_experiment
    from crossfl.server.lifecycle import RunFailed, RunStopped, run_experiment

    exp, path = load_experiment(experiment)
    console = Console()
    try:
        run_experiment(exp, path, console, stop_after=stop_after)
    except RunStopped as exc:
        console.print(str(exc))
    except RunFailed as exc:
        raise UserError(
            str(exc), file=path, fix="see metrics.jsonl in the run directory for each site's error"
        ) from None


def resume_command(
    run: Annotated[str, typer.Argument(help="run directory (runs/NAME-TIMESTAMP)")],
    stop_after: StopAfter = None,
    from_round: Annotated[
        int | None,
        typer.Option(
            "--from-round",
            min=0,
            help="continue from the kept checkpoint of this round (async: aggregation); "
            "what came after it is set aside in checkpoint/superseded-*",
        ),
    ] = None,
) -> None:
    """Continue a killed or stopped run in its own directory from its last checkpoint."""
    from crossfl.server.lifecycle import RunFailed, RunStopped, resume_run

    run_dir = resolve_run_dir(run)
    console = Console()
    try:
        resume_run(run_dir, console, stop_after=stop_after, from_round=from_round)
    except RunStopped as exc:
        console.print(str(exc))
    except RunFailed as exc:
        raise UserError(
            str(exc), file=run_dir, fix="see metrics.jsonl in the run directory"
        ) from None


def report_command(
    runs: Annotated[list[str], typer.Argument(help="run directories; several are overlaid")],
) -> None:
    """Summarize runs and (re)draw their plots (several runs: one loss-vs-time plot overlays
    them)."""
    from crossfl.server.report import compare_plot, print_report, write_plots

    run_dirs = [resolve_run_dir(r) for r in runs]
    for run_dir in run_dirs:
        for plot in write_plots(run_dir):
            typer.echo(f"wrote {plot}")
        print_report(run_dir)
    if len(run_dirs) > 1:
        typer.echo(f"wrote {compare_plot(run_dirs, runs_dir() / 'compare_loss_vs_time.png')}")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("resume")(resume_command)
    app.command("report")(report_command)
