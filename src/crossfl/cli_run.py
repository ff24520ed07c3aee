"""`crossfl run EXP` and `crossfl report RUN`."""

from __future__ import annotations

from pathlib import Path

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


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(experiment: str = typer.Argument(..., help="experiment file, or a name in deploy/experiments/")) -> None:
        """Run an experiment: federated rounds across its sites."""
        from crossfl.server.driver import RunFailed, run_experiment
        from crossfl.server.experiment import load_experiment

        exp, path = load_experiment(experiment)
        try:
            run_experiment(exp, path, Console())
        except RunFailed as exc:
            raise UserError(str(exc), file=path, fix="see metrics.jsonl in the run directory for each site's error") from None

    @app.command("report")
    def report(run: str = typer.Argument(..., help="run directory (runs/NAME-TIMESTAMP)")) -> None:
        """Summarize a run and (re)draw its plots."""
        from crossfl.server.report import print_report, write_plots

        run_dir = resolve_run_dir(run)
        for plot in write_plots(run_dir):
            typer.echo(f"wrote {plot}")
        print_report(run_dir)
