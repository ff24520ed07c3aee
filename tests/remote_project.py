"""A throwaway project root for tests that deploy or doctor a site over SSH: the site files
named, this checkout's templates, containers and pins, and a git commit of its own (images
record the commit they were built from), with `.venv` pointing at the venv running the tests
(batch jobs of the local Slurm site activate `{{project_root}}/.venv`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def make_project(root: Path, site_names: list[str]) -> Path:
    (root / "deploy" / "sites").mkdir(parents=True)
    (root / "overrides").mkdir()  # $CROSSFL_SITE_OVERRIDES in the tests: it must exist
    for name in site_names:
        shutil.copy(REPO / "deploy" / "sites" / f"{name}.yaml", root / "deploy" / "sites")
    for link in ("site_templates", "containers"):
        (root / link).symlink_to(REPO / link)
    (root / ".venv").symlink_to(VENV_BIN.parent)
    shutil.copytree(REPO / "requirements", root / "requirements")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(
        REPO / "src" / "crossfl",
        root / "src" / "crossfl",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (root / ".gitignore").write_text("build/\ndeploy/state/\noverrides/\n.venv\n")
    git = ["git", "-c", "user.name=crossfl tests", "-c", "user.email=tests@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "test project"], cwd=root, check=True)
    return root


def head(root: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def override(root: Path, site: str, data: dict) -> None:
    d = root / "overrides"
    d.mkdir(exist_ok=True)
    (d / f"{site}.yaml").write_text(yaml.safe_dump(data))


def activate_line(gc_dir: Path) -> str:
    return f"export GLOBUS_COMPUTE_USER_DIR={gc_dir}; source {VENV_BIN}/activate"
