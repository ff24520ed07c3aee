"""`crossfl deploy/status/logs/stop SITE`: a site's endpoint on its login node, over SSH."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print each remote command and file transfer; do none.")
]
SiteName = Annotated[str, typer.Argument(help="Site name (deploy/sites/NAME.yaml).")]


def deploy_command(
    site: SiteName,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Site-local data to upload (file or directory) into the site's data dir."
        ),
    ] = None,
    no_start: Annotated[
        bool, typer.Option("--no-start", help="Upload and configure only.")
    ] = False,
    contact_email: Annotated[
        str | None,
        typer.Option(
            "--contact-email",
            help="Contact email for endpoints that Globus Compute treats as "
            "multi-user (started by root). Also $CROSSFL_CONTACT_EMAIL.",
        ),
    ] = None,
    build_wait: Annotated[
        int,
        typer.Option(
            "--build-wait",
            min=1,
            help="Minutes to wait for an image build job at the site; a "
            "build still running then is waited for by the next deploy.",
        ),
    ] = 240,
    dry_run: DryRun = False,
) -> None:
    """Render SITE; over SSH put its bundle, image (uploaded, pulled by digest or built
    there: container.image_source) and data in place; configure and start its endpoint.
    --dry-run needs no SSH and no image: it prints the whole plan."""
    from crossfl.deploy import deploy_site

    deploy_site(
        site,
        data=data,
        start=not no_start,
        dry_run=dry_run,
        contact_email=contact_email,
        build_wait_s=build_wait * 60.0,
    )


def status_command(
    site: Annotated[
        str | None, typer.Argument(help="Site name; all deployed sites if omitted.")
    ] = None,
    dry_run: DryRun = False,
) -> None:
    """Endpoint state, pilot jobs, image digest and last deploy of SITE."""
    from crossfl import paths
    from crossfl.deploy import site_status

    paths.require_project()
    names = [site] if site else sorted(p.stem for p in paths.state_dir().glob("*.json"))
    if not names:
        typer.echo(f"no site deployed yet ({paths.state_dir()} holds no state)")
    for name in names:
        site_status(name, dry_run=dry_run)


def logs_command(
    site: SiteName,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines.")] = 50,
    dry_run: DryRun = False,
) -> None:
    """Tail the endpoint log of SITE."""
    from crossfl.deploy import site_logs

    site_logs(site, lines=lines, dry_run=dry_run)


def stop_command(site: SiteName, dry_run: DryRun = False) -> None:
    """Stop the endpoint of SITE."""
    from crossfl.deploy import stop_site

    stop_site(site, dry_run=dry_run)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
    app.command("status")(status_command)
    app.command("logs")(logs_command)
    app.command("stop")(stop_command)
