"""`crossfl sites` and `crossfl render`: the facility catalog and its rendered endpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from crossfl import paths
from crossfl.errors import UserError
from crossfl.tables import fit, named_table

if TYPE_CHECKING:
    from crossfl.sites import Site

out = Console()


def sites_table(sites: list[Site]) -> Table:
    """The catalog, one row a site, in 80 columns with every name whole: a site's devices per
    node and their kind in one column (the image's architecture follows from the kind)."""
    table = named_table("crossfl sites", [s.name for s in sites])
    for col in ("scheduler", "devices/node", "container", "launcher"):
        table.add_column(col)
    for s in sites:
        n, vendor = s.accelerator.devices_per_node, s.accelerator.vendor
        table.add_row(
            s.name,
            s.scheduler,
            f"{n} {vendor}" if vendor != "none" else "cpu only",
            s.container.runtime,
            s.launcher.type,
        )
    return fit(table)


def sites_command() -> None:
    """List the sites of the catalog (deploy/sites/*.yaml)."""
    from crossfl.sites import list_sites, load_site

    paths.require_project()
    out.print(sites_table([load_site(name) for name in list_sites()]))


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
    """Render a site's Globus Compute endpoint files and batch scripts into build/sites/NAME/.
    Every site is checked first, its ${VAR}s set included; nothing is written if one fails."""
    from crossfl.render import render_site
    from crossfl.sites import list_sites, load_site

    paths.require_project()

    if all_sites == (site is not None):
        raise UserError(
            "give one SITE or --all",
            field="render",
            fix="e.g. `crossfl render frontier` or `crossfl render --all`",
        )
    loaded = [load_site(name) for name in (list_sites() if site is None else [site])]
    for s in loaded:
        s.require_set()  # a ${VAR:?} left unset would be rendered as <VAR>
    for s in loaded:
        path = render_site(s, out_dir)
        out.print(f"rendered [bold]{s.name}[/] -> {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("sites")(sites_command)
    app.command("render")(render_command)
