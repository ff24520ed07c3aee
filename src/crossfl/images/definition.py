"""Rendering an arch's image: the Apptainer definition (build/images/crossfl-ARCH.def) and the
OCI Containerfile (crossfl-ARCH.Containerfile) from one set of values and one copy of the shell
steps (containers/steps.j2), and staging what their %files / COPY take in."""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import jinja2

from crossfl import __version__, paths
from crossfl.atomic import atomic_write_bytes, new_dir
from crossfl.errors import UserError
from crossfl.images.arches import ARCHES_FILE, ArchSpec, get_arch, load_arches
from crossfl.images.buildenv import BUILD_SETTINGS, build_hosts
from crossfl.images.defparse import parse_def
from crossfl.images.layout import (
    PREFIX,
    containerfile_path,
    context_path,
    def_path,
    display_path,
    sif_path,
)
from crossfl.images.pins import ImagePins, image_pins
from crossfl.images.published import check_pins

TEMPLATE = "crossfl.def.j2"
CONTAINERFILE_TEMPLATE = "Containerfile.j2"
STEPS_TEMPLATE = "steps.j2"
CHECKER = "check_image.py"
# The shell steps, as files in the context (the Containerfile COPYs and runs them).
STEP_FILES = {"install": "install.sh", "runscript": "runscript", "test": "test.sh"}
# What %files copies in (context name -> image path); the Containerfile COPYs these too.
CONTEXT_FILES = ("constraints.txt", "worker-pins.txt", "worker.txt", CHECKER, "src")


def git_commit() -> str:
    root = paths.project_root()
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(
            "not a git checkout with a commit: an image records the commit its "
            "crossfl package comes from",
            file=root,
            fix="build from a clone",
        )
    return out.stdout.strip()


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths.containers_dir()),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
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


def image_environment(arch: str, spec: ArchSpec) -> list[tuple[str, str]]:
    """The image's runtime environment (%environment, ENV), in order. Values go inside double
    quotes; `$NAME` expands. The venv's lib/ leads LD_LIBRARY_PATH: a base image's baked path
    (oneAPI's, for one) must not shadow the runtime libraries the torch wheel installs there
    (torch XPU: intel-sycl-rt and friends)."""
    return [
        ("PATH", f"{PREFIX}/venv/bin:$PATH"),
        ("LD_LIBRARY_PATH", f"{PREFIX}/venv/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"),
        ("PYTHONNOUSERSITE", "1"),
        ("LC_ALL", "C.UTF-8"),
        ("CROSSFL_IMAGE_ARCH", arch),
        *spec.env.items(),
    ]


def image_labels(arch: str, spec: ArchSpec, pins: ImagePins, commit: str) -> dict[str, str]:
    labels = {
        "org.crossfl.version": __version__,
        "org.crossfl.git-commit": commit,
        "org.crossfl.accelerator": arch,
        "org.crossfl.base-image": spec.base,
        "org.crossfl.torch": pins.torch,
        "org.crossfl.python": pins.python_minor,
    }
    labels.update({f"org.crossfl.pin.{pkg}": version for pkg, version in pins.shared.items()})
    return labels


def image_values(arch: str, *, context: str, commit: str) -> dict[str, Any]:
    """Everything the templates use, and the three shell steps rendered once."""
    table = load_arches()
    spec = get_arch(arch, table)
    pins = image_pins(arch, table)
    check_pins(arch, spec, pins.torch.split("+", 1)[0])
    values: dict[str, Any] = {
        "name": arch,
        "arch": spec,
        "prefix": PREFIX,
        "python_version": table.python_version,
        "uv_version": table.uv_version,
        # uv's own image, as uv documents pinning it ("COPY --from=ghcr.io/astral-sh/uv:0.12.5
        # /uv /uvx /bin/", docs/guides/integration/docker.md in github.com/astral-sh/uv)
        "uv_image": f"ghcr.io/astral-sh/uv:{table.uv_version}",
        "python_minor": pins.python_minor,
        "torch_version": pins.torch,
        "check_args": check_args(spec, pins),
        "environment": image_environment(arch, spec),
        "ld_library_path": dict(image_environment(arch, spec))["LD_LIBRARY_PATH"],
        "labels": image_labels(arch, spec, pins, commit),
        "hosts": build_hosts(spec),
        "build_settings": BUILD_SETTINGS,
        "files": [(f"{context}/{name}", f"{PREFIX}/{name}") for name in CONTEXT_FILES],
        "def_path": display_path(def_path(arch)),
        "sif_path": display_path(sif_path(arch)),
        "containerfile_path": display_path(containerfile_path(arch)),
        "tag": f"crossfl-{arch}:{commit[:12]}",
    }
    steps = _environment().get_template(STEPS_TEMPLATE).make_module(values)
    for macro in STEP_FILES:
        values[macro] = str(getattr(steps, macro)()).lstrip("\n")
    return values


def render_text(arch: str, *, context: str, commit: str) -> str:
    """The Apptainer definition file's text."""
    text = (
        _environment()
        .get_template(TEMPLATE)
        .render(image_values(arch, context=context, commit=commit))
    )
    parse_def(text)  # the template must yield a def file this parser (and Apptainer) accepts
    return text


def render_containerfile_text(arch: str, *, context: str, commit: str) -> str:
    """The OCI Containerfile's text: the def's install steps, environment, labels, runscript."""
    values = image_values(arch, context=context, commit=commit)
    if values["arch"].bootstrap != "docker":
        raise UserError(
            f"{arch} bootstraps with {values['arch'].bootstrap}; a Containerfile "
            "starts FROM a registry image",
            field="ARCH",
            file=paths.containers_dir() / ARCHES_FILE,
            fix="use an arch with bootstrap: docker (cpu, cuda, rocm, xpu)",
        )
    values["files"] = values["files"] + [
        (f"{context}/{name}", f"{PREFIX}/{name}") for name in STEP_FILES.values()
    ]
    return _environment().get_template(CONTAINERFILE_TEMPLATE).render(values)


def _stage_context(context: Path, commit: str, steps: dict[str, str]) -> None:
    """What %files and COPY take in: the pins, the worker list, the checker, the shell steps,
    and the crossfl package exactly as committed (`git archive`), so the labels' commit is what
    the image holds."""
    root = paths.project_root()
    with new_dir(context) as tmp:
        shutil.copy2(root / "requirements" / "constraints.txt", tmp / "constraints.txt")
        shutil.copy2(root / "requirements" / "worker.txt", tmp / "worker.txt")
        shutil.copy2(root / "requirements" / "worker-pins.txt", tmp / "worker-pins.txt")
        shutil.copy2(paths.containers_dir() / CHECKER, tmp / CHECKER)
        for macro, name in STEP_FILES.items():
            (tmp / name).write_text(("#!/bin/sh\n" if macro == "runscript" else "") + steps[macro])
        members = ["pyproject.toml", "src/crossfl"]
        listed = subprocess.run(
            ["git", "ls-tree", "--name-only", commit, "README.md"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
        members += [listed] if listed else []
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, *members], cwd=root, capture_output=True
        )
        if archive.returncode != 0:
            raise UserError(f"git archive failed: {archive.stderr.decode().strip()}", file=root)
        (tmp / "src").mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp / "src", filter="data")


def _render(arch: str, out: Path, render: Any) -> Path:
    get_arch(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    context = context_path(arch)
    text = render(arch, context=display_path(context), commit=commit)
    steps = image_values(arch, context=display_path(context), commit=commit)
    _stage_context(context, commit, {macro: steps[macro] for macro in STEP_FILES})
    atomic_write_bytes(out, text.encode())
    return out


def render_def(arch: str) -> Path:
    """Render build/images/crossfl-ARCH.def and stage its %files beside it. Returns the def."""
    return _render(arch, def_path(arch), render_text)


def render_containerfile(arch: str) -> Path:
    """Render build/images/crossfl-ARCH.Containerfile and stage its COPY sources beside it."""
    return _render(arch, containerfile_path(arch), render_containerfile_text)
