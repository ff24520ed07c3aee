"""`crossfl deploy/status/logs/stop SITE`: a site's endpoint on its login node, over SSH."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DRY = typer.Option(False, "--dry-run", help="Print each remote command and file transfer; do none.")


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(
        site: str = typer.Argument(..., help="Site name (deploy/sites/NAME.yaml)."),
        data: Optional[Path] = typer.Option(None, "--data", help="Site-local data to upload "
                                            "(file or directory) into the site's data dir."),
        no_start: bool = typer.Option(False, "--no-start", help="Upload and configure only."),
        contact_email: Optional[str] = typer.Option(
            None, "--contact-email", help="Contact email for endpoints that Globus Compute "
            "treats as multi-user (started by root). Also $CROSSFL_CONTACT_EMAIL."),
        dry_run: bool = DRY,
    ) -> None:
        """Render SITE, upload bundle/image/data over SSH, configure and start its endpoint."""
        from crossfl.deploy import deploy_site
        deploy_site(site, data=data, start=not no_start, dry_run=dry_run,
                    contact_email=contact_email)

    @app.command("status")
    def status(site: Optional[str] = typer.Argument(None, help="Site name; all deployed sites "
                                                    "if omitted."),
               dry_run: bool = DRY) -> None:
        """Endpoint state, pilot jobs, image digest and last deploy of SITE."""
        from crossfl import paths
        from crossfl.deploy import site_status
        names = [site] if site else sorted(p.stem for p in paths.state_dir().glob("*.json"))
        if not names:
            typer.echo("no site deployed yet (deploy/state/ is empty)")
        for name in names:
            site_status(name, dry_run=dry_run)

    @app.command("logs")
    def logs(site: str = typer.Argument(...),
             lines: int = typer.Option(50, "-n", "--lines", help="How many lines."),
             dry_run: bool = DRY) -> None:
        """Tail the endpoint log of SITE."""
        from crossfl.deploy import site_logs
        site_logs(site, lines=lines, dry_run=dry_run)

    @app.command("stop")
    def stop(site: str = typer.Argument(...), dry_run: bool = DRY) -> None:
        """Stop the endpoint of SITE."""
        from crossfl.deploy import stop_site
        stop_site(site, dry_run=dry_run)
