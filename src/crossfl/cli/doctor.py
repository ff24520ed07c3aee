"""`crossfl doctor SITE [--smoke]`: the site's login node and scheduler checked over SSH, one
line per check (crossfl.deploy.doctor); exit status 1 on any FAIL."""

from __future__ import annotations

from typing import Annotated

import typer


def doctor_command(
    site: Annotated[str, typer.Argument(help="Site name (deploy/sites/NAME.yaml).")],
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="Also submit the rendered smoke job and print what each rank sees "
            "(devices and device environment).",
        ),
    ] = False,
    timeout: Annotated[
        int, typer.Option("--timeout", min=1, help="Minutes to wait for the smoke job.")
    ] = 30,
) -> None:
    """Check SITE on its login node: scheduler, account, modules, container runtime, image,
    endpoint versions, filesystems, the Globus service, queue limits (and --smoke)."""
    from crossfl.deploy.doctor import print_report, run_doctor

    report = run_doctor(site, smoke=smoke, smoke_wait_s=timeout * 60.0)
    print_report(report)
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
