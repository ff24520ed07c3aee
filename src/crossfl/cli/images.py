"""`crossfl image def|build|sign|check`: the worker images (crossfl.images)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossfl import images

Arch = Annotated[str, typer.Argument(
    metavar="ARCH", help="accelerator stack: one of containers/arches.yaml (cpu, cuda, rocm, xpu)")]
Fakeroot = Annotated[bool | None, typer.Option(
    "--fakeroot/--no-fakeroot", help="default: --fakeroot unless running as root")]
SigningKey = Annotated[Path | None, typer.Option(
    "--key", help="PEM private key (default: the PGP key `apptainer key` holds)")]
Keep = Annotated[bool, typer.Option("--keep", help="keep the throwaway tree")]


def def_command(arch: Arch) -> None:
    """Render build/images/crossfl-ARCH.def (and stage its %files)."""
    typer.echo(images.display_path(images.render_def(arch)))


def build_command(arch: Arch, fakeroot: Fakeroot = None) -> None:
    """Render the def, `apptainer build` crossfl-ARCH.sif, record it in manifest.json."""
    entry = images.build_image(arch, fakeroot=fakeroot)
    typer.echo(f"{entry.image} {entry.digest} (commit {entry.git_commit or 'unknown'})")


def sign_command(arch: Arch, key: SigningKey = None) -> None:
    """`apptainer sign` crossfl-ARCH.sif and re-record its digest."""
    entry = images.sign_image(arch, key=key)
    typer.echo(f"{entry.image} signed, {entry.digest}")


def check_command(arch: Arch = "cpu", keep: Keep = False) -> None:
    """Run ARCH's %post, %test and %runscript here in a throwaway venv (cpu only)."""
    result = images.check_build_steps(arch, keep=keep)
    steps = ", ".join(f"%{name} {sec:.0f} s" for name, sec in result.seconds.items())
    log = images.display_path(images.images_dir() / f"image-check-{arch}.log")
    typer.echo(f"{arch}: ok ({steps}); torch {result.torch}; devices "
               f"{result.devices.get('device', '?')}; log {log}"
               + (f"; tree {result.workdir}" if keep else ""))


def register(app: typer.Typer) -> None:
    """Add the `image` command group to the main app."""
    image = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Apptainer worker images, one per accelerator stack.")
    image.command("def")(def_command)
    image.command("build")(build_command)
    image.command("sign")(sign_command)
    image.command("check")(check_command)
    app.add_typer(image, name="image")
