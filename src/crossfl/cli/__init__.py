"""The `crossfl` command. The Makefile calls it; each area registers its own commands from a
module of this package (`register(app)`), so this file only wires them together and turns a
`UserError` into one line on stderr and exit status 2, for every command.

One style throughout: each command is a module-level function whose parameters are
`Annotated[..., typer.Option/Argument(...)]`; heavy modules are imported inside the command.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from crossfl.errors import UserError

AREAS = ("data", "model", "sites", "images", "deploy", "doctor", "run", "simulate")

err = Console(stderr=True)


def build_app() -> typer.Typer:
    app = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        help="Federated LoRA fine-tuning across HPC facilities.",
    )
    for area in AREAS:
        importlib.import_module(f"crossfl.cli.{area}").register(app)
    return app


def main() -> None:
    app = build_app()
    try:
        app(standalone_mode=True)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)
