"""Secrets stay secret: a client secret in deploy.python_activate or a token of the environment
never reaches printed output, an error (and so a state file), or a world-readable rendered
file; files without one are written as the user's umask says. (Remote command lines and the
dry run over a real sshd: tests/test_deploy.py::test_secrets_stay_out_of_output_argv_and_state.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from crossfl import paths, render, sites
from crossfl.atomic import atomic_write_text, current_umask
from crossfl.errors import UserError
from crossfl.redact import carries_secret, redact

REPO = Path(__file__).resolve().parents[1]
SECRET = "gcs-9f8e7d6c5b4a"


@pytest.mark.parametrize(
    "text, hidden",
    [
        (f"export GLOBUS_COMPUTE_CLIENT_SECRET={SECRET}; source v/bin/activate", SECRET),
        (f"MY_API_TOKEN='{SECRET} x' cmd", f"{SECRET} x"),
        (f'DB_PASSWORD="{SECRET}" cmd', SECRET),
        (f"HF_TOKEN={SECRET}&&x", SECRET),
        (f"AWS_SECRET_ACCESS_KEY={SECRET}", SECRET),
    ],
)
def test_secret_assignments_are_masked(text: str, hidden: str) -> None:
    out = redact(text, environ={})
    assert hidden not in out and "***" in out and carries_secret(text, environ={})


def test_environment_secrets_are_masked_wherever_they_appear() -> None:
    env = {"GLOBUS_COMPUTE_CLIENT_SECRET": SECRET, "HOME": "/home/u", "USE_TOKEN": "true"}
    assert redact(f"display: crossfl {SECRET}", env) == "display: crossfl ***"
    assert redact("/home/u encrypted: true", env) == "/home/u encrypted: true"  # too common


def test_ordinary_text_is_left_alone() -> None:
    text = "generate_max_new_tokens=4 account=P1 passwd_file=/etc/x export A=1"
    assert redact(text, environ={}) == text and not carries_secret(text, environ={})


def test_a_user_error_never_carries_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_SOME_TOKEN", SECRET)
    err = UserError(
        f"python_activate failed (export GLOBUS_COMPUTE_CLIENT_SECRET=abcd; {SECRET})",
        fix=f"check {SECRET}",
    )
    assert SECRET not in err.render() and "abcd" not in err.render() and SECRET not in str(err)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    shutil.copytree(
        REPO / "deploy" / "sites",
        root / "deploy" / "sites",
        ignore=shutil.ignore_patterns("overrides"),
    )
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.delenv("CROSSFL_SITE_OVERRIDES", raising=False)
    monkeypatch.setattr(paths, "templates_dir", lambda: REPO / "site_templates")
    return root / "deploy" / "sites"


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mode & 0o777 for p in root.rglob("*")}


def test_rendered_files_holding_a_secret_are_0600_the_rest_follow_the_umask(
    catalog: Path, tmp_path: Path, umask: None
) -> None:
    """An MPI site's worker runs on the host with the login node's Python: its worker_init
    carries deploy.python_activate, and with it any secret that line exports."""
    assert current_umask() == 0o027
    ov = tmp_path / "ov.yaml"
    activate = f"export GLOBUS_COMPUTE_CLIENT_SECRET={SECRET}; source ~/gc/bin/activate"
    ov.write_text(yaml.safe_dump({"deploy": {"python_activate": activate}}))
    site = sites.load_site("local-slurm-mpi", overrides=ov)
    out = render.render_site(site, tmp_path / "sites")
    got = modes(out)
    template = (out / "endpoint" / "user_config_template.yaml.j2").read_text()
    assert SECRET in template  # the engine's worker needs the line as it is
    assert got["endpoint/user_config_template.yaml.j2"] == 0o600
    assert got["endpoint/user_config.example.yaml"] == 0o600
    assert got["endpoint/user_config_schema.json"] == 0o640  # 0666 less the umask 027
    assert got["batch/smoke.sh"] == 0o750  # scripts: 0777 less the umask
    assert got["endpoint"] == 0o750 and (out.stat().st_mode & 0o777) == 0o750

    plain = render.render_site(sites.load_site("local-slurm-mpi"), tmp_path / "plain")
    assert modes(plain)["endpoint/user_config_template.yaml.j2"] == 0o640


def test_atomic_writes_follow_the_umask_or_the_mode_asked(tmp_path: Path, umask: None) -> None:
    a = atomic_write_text(tmp_path / "a.json", "{}")
    b = atomic_write_text(tmp_path / "b.json", "{}", mode=0o600)
    assert a.stat().st_mode & 0o777 == 0o640 and b.stat().st_mode & 0o777 == 0o600
