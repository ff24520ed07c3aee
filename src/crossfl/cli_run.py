"""`crossfl run EXP`, `crossfl resume RUN` and `crossfl report RUN [RUN ...]`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from crossfl.errors import UserError
from crossfl.paths import runs_dir


def resolve_run_dir(ref: str) -> Path:
    path = Path(ref)
    for candidate in (path, runs_dir() / ref):
        if (candidate / "metrics.jsonl").is_file() or (candidate / "experiment.yaml").is_file():
            return candidate
    known = sorted(p.name for p in runs_dir().glob("*") if p.is_dir())[-3:]
    raise UserError(f"no run directory {ref!r}", fix=f"give a path under runs/ ({', '.join(known) or 'none yet'})")


STOP_HELP = "stop once this round (async: aggregation) is checkpointed; `crossfl resume` continues"


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(experiment: str = typer.Argument(..., help="experiment file, or a name in deploy/experiments/"),
            stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1, help=STOP_HELP)) -> None:
        """Run an experiment: federated rounds across its sites."""
        from crossfl.server.lifecycle import RunFailed, RunStopped, run_experiment
        from crossfl.server.experiment import load_experiment

        exp, path = load_experiment(experiment)
        console = Console()
        try:
            run_experiment(exp, path, console, stop_after=stop_after)
        except RunStopped as exc:
            console.print(str(exc))
        except RunFailed as exc:
            raise UserError(str(exc), file=path, fix="see metrics.jsonl in the run directory for each site's error") from None

    @app.command("resume")
    def resume(run: str = typer.Argument(..., help="run directory (runs/NAME-TIMESTAMP)"),
               stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1, help=STOP_HELP)) -> None:
        """Continue a killed or stopped run in its own directory from its last checkpoint."""
        from crossfl.server.lifecycle import RunFailed, RunStopped, resume_run

        run_dir = resolve_run_dir(run)
        console = Console()
        try:
            resume_run(run_dir, console, stop_after=stop_after)
        except RunStopped as exc:
            console.print(str(exc))
        except RunFailed as exc:
            raise UserError(str(exc), file=run_dir, fix="see metrics.jsonl in the run directory") from None

    @app.command("report")
    def report(runs: list[str] = typer.Argument(..., help="run directories; several are overlaid")) -> None:
        """Summarize runs and (re)draw their plots (several runs: one loss-vs-time plot overlays them)."""
        from crossfl.server.report import compare_plot, print_report, write_plots

        run_dirs = [resolve_run_dir(r) for r in runs]
        for run_dir in run_dirs:
            for plot in write_plots(run_dir):
                typer.echo(f"wrote {plot}")
            print_report(run_dir)
        if len(run_dirs) > 1:
            typer.echo(f"wrote {compare_plot(run_dirs, runs_dir() / 'compare_loss_vs_time.png')}")
