"""The `crossfl` command. The Makefile calls it; each area registers its own commands
from a `crossfl.cli.<area>` module, so this file only wires them together."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from crossfl.errors import UserError

AREAS = ("data", "model", "sites", "images", "deploy", "run")

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Federated LoRA fine-tuning across HPC facilities.")
err = Console(stderr=True)


def build_app() -> typer.Typer:
    for area in AREAS:
        module = importlib.import_module(f"crossfl.cli.{area}")
        module.register(app)
    return app


def main() -> None:
    build_app()
    try:
        app(standalone_mode=True)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
