"""Where images live: build/images/crossfl-ARCH.{def,sif,Containerfile}, manifest.json;
/opt/crossfl inside."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from crossfl import paths

if TYPE_CHECKING:
    from crossfl.images.arches import ArchSpec

PREFIX = "/opt/crossfl"  # the image's own tree: venv, pins, checker


def images_dir() -> Path:
    return paths.build_dir() / "images"


def def_path(arch: str) -> Path:
    return images_dir() / f"crossfl-{arch}.def"


def containerfile_path(arch: str) -> Path:
    return images_dir() / f"crossfl-{arch}.Containerfile"


def context_path(arch: str) -> Path:
    """What %files and COPY take in: staged beside the def and the Containerfile."""
    return images_dir() / f"crossfl-{arch}.context"


def sif_path(arch: str) -> Path:
    return images_dir() / f"crossfl-{arch}.sif"


def manifest_path() -> Path:
    return images_dir() / "manifest.json"


def display_path(path: Path) -> str:
    """A path as the def file and argv name it: relative to the project root when inside it."""
    try:
        return str(path.resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path.resolve())


def image_paths(spec: ArchSpec) -> list[str]:
    """What a worker needs to see from the image itself: the prefix, the venv, its Python and
    globus-compute-endpoint, the interpreter the venv was made from, Apptainer's metadata."""
    python = spec.python.path if spec.python.source == "base" else f"{PREFIX}/python"
    return [
        PREFIX,
        f"{PREFIX}/venv",
        f"{PREFIX}/venv/bin/python",
        f"{PREFIX}/venv/bin/globus-compute-endpoint",
        python,
        "/.singularity.d",
    ]
