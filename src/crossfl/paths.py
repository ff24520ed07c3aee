"""Where the kit's files live. Everything is relative to the project root: the directory the
`crossfl` command runs in (the Makefile runs it from the checkout), or $CROSSFL_ROOT."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    return Path(os.environ.get("CROSSFL_ROOT") or os.getcwd()).resolve()


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
