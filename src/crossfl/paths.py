"""Where the kit's files live. Everything is relative to the project root: $CROSSFL_ROOT when
set, else the nearest directory at or above the current one that holds the site catalog
(`deploy/sites/`), so `crossfl` works from any directory of the checkout; outside any project,
the current directory (and commands that need the catalog say where they looked)."""

from __future__ import annotations

import os
from pathlib import Path

from crossfl.errors import UserError

ROOT_ENV = "CROSSFL_ROOT"
MARKER = Path("deploy") / "sites"
"""What makes a directory a project root: the site catalog."""


def project_root() -> Path:
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    return next((d for d in (here, *here.parents) if (d / MARKER).is_dir()), here)


def sites_dir() -> Path:
    return project_root() / "deploy" / "sites"


def experiments_dir() -> Path:
    return project_root() / "deploy" / "experiments"


def state_dir() -> Path:
    return project_root() / "deploy" / "state"


def templates_dir() -> Path:
    return project_root() / "site_templates"


def containers_dir() -> Path:
    return project_root() / "containers"


def build_dir() -> Path:
    return project_root() / "build"


def runs_dir() -> Path:
    return project_root() / "runs"


def require_project() -> Path:
    """The project root, or one line saying where to run when there is no catalog."""
    root = project_root()
    if not (root / MARKER).is_dir():
        raise UserError(
            f"no site catalog ({MARKER}/) in {root} or above it",
            fix=f"run crossfl inside the crossfl checkout (any directory of it), or set "
            f"{ROOT_ENV} to the checkout",
        )
    return root
