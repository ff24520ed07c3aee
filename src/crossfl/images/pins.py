"""Versions an image installs: requirements/constraints.txt (the login node's own pins, so
parsl, dill and globus-compute-endpoint cannot drift apart), requirements/worker.txt and
worker-pins.txt, and the one Python minor pyproject allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images.arches import ARCHES_FILE, ArchTable, get_arch, load_arches

# Must be equal on the login node and in every image: the endpoint does not refuse a mismatched
# worker (engines/globus_compute.py turns Parsl's version check off), but Parsl's wire format
# between the manager and the interchange changes between releases.
MUST_AGREE = ("parsl", "dill", "globus-compute-endpoint", "globus-compute-sdk")


def read_constraints(path: Path | None = None) -> dict[str, str]:
    """`name==version` lines of requirements/constraints.txt, keyed by canonical name."""
    path = path or paths.project_root() / "requirements" / "constraints.txt"
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if not match:
            raise UserError(f"line {number} is not `name==version`: {line!r}", file=path)
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def worker_requirements(path: Path | None = None) -> list[str]:
    """The names in requirements/worker.txt (versions belong in constraints.txt)."""
    path = path or paths.project_root() / "requirements" / "worker.txt"
    names = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            raise UserError(
                f"{line!r}: names only here, versions live in constraints.txt", file=path
            )
        names.append(str(canonicalize_name(line)))
    return names


def python_minor(pyproject: Path | None = None) -> str:
    """The one Python minor that pyproject's requires-python allows (the endpoint's)."""
    pyproject = pyproject or paths.project_root() / "pyproject.toml"
    text = tomllib.loads(pyproject.read_text())["project"].get("requires-python", "")
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        raise UserError(f"requires-python {text!r} is not a specifier", file=pyproject) from None
    minors = [f"3.{m}" for m in range(6, 30) if spec.contains(f"3.{m}.0")]
    if len(minors) != 1:
        raise UserError(
            f"requires-python {text!r} must allow exactly one minor (it allows "
            f"{', '.join(minors) or 'none'}): workers must run the endpoint's",
            file=pyproject,
            field="project.requires-python",
        )
    return minors[0]


class ImagePins(BaseModel):
    python_minor: str
    torch: str  # with the vendor's local tag, e.g. 2.13.0+cu128
    shared: dict[str, str]  # distribution -> version, equal to the login node's


def image_pins(arch: str, table: ArchTable | None = None) -> ImagePins:
    root = paths.project_root()
    table = table or load_arches()
    spec = get_arch(arch, table)
    constraints_path = root / "requirements" / "constraints.txt"
    constraints = read_constraints(constraints_path)
    minor = python_minor()
    arches_path = paths.containers_dir() / ARCHES_FILE
    if not table.python_version.startswith(minor + "."):
        raise UserError(
            f"{table.python_version} is not Python {minor}, the endpoint's minor",
            file=arches_path,
            field="python_version",
        )
    if spec.python.source == "base" and not spec.python.path.endswith(f"python{minor}"):
        raise UserError(
            f"{spec.python.path} is not a python{minor} interpreter",
            file=arches_path,
            field=f"arches.{arch}.python.path",
        )
    extra_path = root / "requirements" / "worker-pins.txt"
    extra = read_constraints(extra_path)
    twice = sorted(set(extra) & set(constraints))
    if twice:
        raise UserError(
            f"{', '.join(twice)} pinned here and in constraints.txt",
            file=extra_path,
            fix="keep shared pins in constraints.txt only",
        )
    wanted = list(dict.fromkeys([*worker_requirements(), *MUST_AGREE, "torch"]))
    missing = [name for name in wanted if name not in constraints]
    if missing:
        raise UserError(
            f"no pin for {', '.join(missing)}",
            file=constraints_path,
            fix="pin them there (name==version): images install with -c that file",
        )
    shared = {name: constraints[name] for name in wanted if name != "torch"}
    torch = constraints["torch"].split("+", 1)[0] + "+" + spec.torch.local
    return ImagePins(python_minor=minor, torch=torch, shared=shared)
