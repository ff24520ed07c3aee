"""`crossfl sites` and `crossfl render`: the facility catalog and its rendered endpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crossfl.errors import UserError

out = Console()


def sites_command() -> None:
    """List the sites of the catalog (deploy/sites/*.yaml)."""
    from crossfl.sites import list_sites, load_site

    table = Table(title="crossfl sites")
    for col in ("name", "scheduler", "accelerator", "devices/node", "container", "launcher"):
        table.add_column(col)
    for name in list_sites():
        s = load_site(name)
        image = f"{s.container.runtime} ({s.arch})" if s.container.runtime != "none" else "none"
        table.add_row(
            s.name,
            s.scheduler,
            s.accelerator.vendor,
            str(s.accelerator.devices_per_node),
            image,
            s.launcher.type,
        )
    out.print(table)


def render_command(
    site: Annotated[
        str | None, typer.Argument(help="site name (deploy/sites/NAME.yaml) or path")
    ] = None,
    all_sites: Annotated[
        bool, typer.Option("--all", help="render every site of the catalog")
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="output root (default build/sites)")
    ] = None,
) -> None:
    """Render a site's Globus Compute endpoint files and batch scripts into build/sites/NAME/."""
    from crossfl.render import render_site
    from crossfl.sites import list_sites

    if all_sites == (site is not None):
        raise UserError(
            "give one SITE or --all",
            field="render",
            fix="e.g. `crossfl render frontier` or `crossfl render --all`",
        )
    names = list_sites() if all_sites else [site]
    for name in names:
        path = render_site(name, out_dir)
        out.print(f"rendered [bold]{name}[/] -> {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("sites")(sites_command)
    app.command("render")(render_command)
