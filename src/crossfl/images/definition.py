"""Rendering build/images/crossfl-ARCH.def from containers/crossfl.def.j2 and the arch table,
and staging what its %files copies in."""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path

import jinja2

from crossfl import __version__, paths
from crossfl.atomic import atomic_write_bytes, new_dir
from crossfl.errors import UserError
from crossfl.images.arches import ArchSpec, get_arch, load_arches
from crossfl.images.defparse import parse_def
from crossfl.images.layout import PREFIX, def_path, display_path, sif_path
from crossfl.images.pins import ImagePins, image_pins

TEMPLATE = "crossfl.def.j2"
CHECKER = "check_image.py"


def git_commit() -> str:
    root = paths.project_root()
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError("not a git checkout with a commit: an image records the commit its "
                        "crossfl package comes from", file=root, fix="build from a clone")
    return out.stdout.strip()


def _stage_context(context: Path, commit: str) -> None:
    """What %files copies in: the pins, the worker list, the checker, and the crossfl package
    exactly as committed (`git archive`), so the labels' commit is what the image holds."""
    root = paths.project_root()
    with new_dir(context) as tmp:
        shutil.copy2(root / "requirements" / "constraints.txt", tmp / "constraints.txt")
        shutil.copy2(root / "requirements" / "worker.txt", tmp / "worker.txt")
        shutil.copy2(root / "requirements" / "worker-pins.txt", tmp / "worker-pins.txt")
        shutil.copy2(paths.containers_dir() / CHECKER, tmp / CHECKER)
        members = ["pyproject.toml", "src/crossfl"]
        listed = subprocess.run(["git", "ls-tree", "--name-only", commit, "README.md"],
                                cwd=root, capture_output=True, text=True).stdout.strip()
        members += [listed] if listed else []
        archive = subprocess.run(["git", "archive", "--format=tar", commit, *members],
                                 cwd=root, capture_output=True)
        if archive.returncode != 0:
            raise UserError(f"git archive failed: {archive.stderr.decode().strip()}", file=root)
        (tmp / "src").mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp / "src", filter="data")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.containers_dir()),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["sh"] = shlex.quote
    return env


def check_args(spec: ArchSpec, pins: ImagePins) -> str:
    """The arguments %post and %test pass to check_image.py."""
    args = ["--python-minor", pins.python_minor, "--torch", pins.torch, "--stack", spec.stack]
    if spec.stack_version:
        args += ["--stack-version", spec.stack_version]
    for name, version in pins.shared.items():
        args += ["--pin", f"{name}=={version}"]
    return shlex.join(args)


def render_text(arch: str, *, context: str, commit: str) -> str:
    table = load_arches()
    spec = get_arch(arch, table)
    pins = image_pins(arch, table)
    text = _environment().get_template(TEMPLATE).render(
        name=arch, arch=spec, prefix=PREFIX, context=context, git_commit=commit,
        crossfl_version=__version__, python_version=table.python_version,
        uv_version=table.uv_version, python_minor=pins.python_minor, torch_version=pins.torch,
        shared_pins=pins.shared, check_args=check_args(spec, pins),
        def_path=display_path(def_path(arch)), sif_path=display_path(sif_path(arch)))
    parse_def(text)  # the template must yield a def file this parser (and Apptainer) accepts
    return text


def render_def(arch: str) -> Path:
    """Render build/images/crossfl-ARCH.def and stage its %files beside it. Returns the def."""
    get_arch(arch)
    out = def_path(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    context = out.parent / f"crossfl-{arch}.context"
    text = render_text(arch, context=display_path(context), commit=commit)
    _stage_context(context, commit)
    atomic_write_bytes(out, text.encode())
    return out
