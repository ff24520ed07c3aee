"""`crossfl image def|containerfile|hosts|build|sign`: the worker images (crossfl.images).
`make image-check` (a real build here and a federation inside it) is test scaffolding:
testkit/image_check.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossfl import images

Arch = Annotated[
    str,
    typer.Argument(
        metavar="ARCH",
        help="accelerator stack: one of containers/arches.yaml (cpu, cuda, rocm, xpu)",
    ),
]
Fakeroot = Annotated[
    bool | None,
    typer.Option("--fakeroot/--no-fakeroot", help="default: --fakeroot unless running as root"),
]
SigningKey = Annotated[
    Path | None,
    typer.Option("--key", help="PEM private key (default: the PGP key `apptainer key` holds)"),
]


def def_command(arch: Arch) -> None:
    """Render build/images/crossfl-ARCH.def (and stage its %files)."""
    typer.echo(images.display_path(images.render_def(arch)))


def containerfile_command(arch: Arch) -> None:
    """Render build/images/crossfl-ARCH.Containerfile for podman / podman-hpc (same steps)."""
    typer.echo(images.display_path(images.render_containerfile(arch)))


def hosts_command(arch: Arch) -> None:
    """The hosts ARCH's image build must reach (registry, wheel channels, uv, apt)."""
    for host in images.build_hosts(images.get_arch(arch)):
        typer.echo(host)


def build_command(arch: Arch, fakeroot: Fakeroot = None) -> None:
    """Render the def, `apptainer build` crossfl-ARCH.sif, record it in manifest.json."""
    entry = images.build_image(arch, fakeroot=fakeroot)
    typer.echo(f"{entry.image} {entry.digest} (commit {entry.git_commit or 'unknown'})")


def sign_command(arch: Arch, key: SigningKey = None) -> None:
    """`apptainer sign` crossfl-ARCH.sif and re-record its digest."""
    entry = images.sign_image(arch, key=key)
    typer.echo(f"{entry.image} signed, {entry.digest}")


def register(app: typer.Typer) -> None:
    """Add the `image` command group to the main app."""
    image = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        help="Worker images (Apptainer, and OCI for podman-hpc), one per accelerator stack.",
    )
    image.command("def")(def_command)
    image.command("containerfile")(containerfile_command)
    image.command("hosts")(hosts_command)
    image.command("build")(build_command)
    image.command("sign")(sign_command)
    app.add_typer(image, name="image")
