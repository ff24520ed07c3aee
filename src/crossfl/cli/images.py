"""`crossfl image def|build|sign|check`: the worker images (src/crossfl/images.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from crossfl import images
from crossfl.errors import UserError

ARCH_HELP = "accelerator stack: one of containers/arches.yaml (cpu, cuda, rocm, xpu)"


def register(app: typer.Typer) -> None:
    image = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Apptainer worker images, one per accelerator stack.")

    @image.command("def")
    def render(arch: str = typer.Argument(..., metavar="ARCH", help=ARCH_HELP)) -> None:
        """Render build/images/crossfl-ARCH.def (and stage its %files)."""
        typer.echo(images.display_path(images.render_def(arch)))

    @image.command("build")
    def build(arch: str = typer.Argument(..., metavar="ARCH", help=ARCH_HELP),
              fakeroot: Optional[bool] = typer.Option(
                  None, "--fakeroot/--no-fakeroot",
                  help="default: --fakeroot unless running as root")) -> None:
        """Render the def, `apptainer build` crossfl-ARCH.sif, record it in manifest.json."""
        entry = images.build_image(arch, fakeroot=fakeroot)
        typer.echo(f"{entry.image} {entry.digest} (commit {entry.git_commit or 'unknown'})")

    @image.command("sign")
    def sign(arch: str = typer.Argument(..., metavar="ARCH", help=ARCH_HELP),
             key: Optional[Path] = typer.Option(None, "--key", help="PEM private key "
                                                "(default: the PGP key `apptainer key` holds)")
             ) -> None:
        """`apptainer sign` crossfl-ARCH.sif and re-record its digest."""
        entry = images.sign_image(arch, key=key)
        typer.echo(f"{entry.image} signed, {entry.digest}")

    @image.command("check")
    def check(arch: str = typer.Argument("cpu", metavar="ARCH", help=ARCH_HELP),
              keep: bool = typer.Option(False, "--keep", help="keep the throwaway tree")) -> None:
        """Run ARCH's %post, %test and %runscript here in a throwaway venv (cpu only)."""
        result = images.check_build_steps(arch, keep=keep)
        steps = ", ".join(f"%{name} {sec:.0f} s" for name, sec in result.seconds.items())
        typer.echo(f"{arch}: ok ({steps}); torch {result.torch}; "
                   f"devices {result.devices.get('device', '?')}; log "
                   f"{images.display_path(images.images_dir() / f'image-check-{arch}.log')}"
                   + (f"; tree {result.workdir}" if keep else ""))

    app.add_typer(image, name="image")


def main() -> None:
    """`python -m crossfl.cli_images image ...`: these commands alone, as `crossfl` runs them."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    try:
        app(standalone_mode=True)
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
