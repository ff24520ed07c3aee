"""Secrets stay secret: a client secret in deploy.python_activate or a token of the environment
never reaches printed output, an error (and so a state file), or a world-readable rendered
file; files without one are written as the user's umask says, and the script sent on to the
endpoint's recorded login node is in no command line. (Remote command lines and the dry run
over a real sshd: tests/test_deploy.py::test_secrets_stay_out_of_output_argv_and_state.)
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


def _run_hop(tmp_path: Path, script: str, hop_rc: int | None = None) -> tuple[int, str, str]:
    """What the login node the connection reached runs to send `script` on to the endpoint's
    recorded login node (Remote.hop_script), run here with a hop line that logs its command
    line and then runs the rest of it (or fails as ssh does, with `hop_rc`)."""
    import subprocess

    from crossfl.deploy.remote import REMOTE_SHELL, Remote, Target

    argv = tmp_path / "argv.txt"
    hop = tmp_path / "hop"
    body = f"exit {hop_rc}" if hop_rc is not None else 'shift; exec "$@"'
    hop.write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {argv}\n{body}\n')
    hop.chmod(0o755)
    remote = Remote(Target(site="s", host="login", activate=f"export CLIENT_SECRET={SECRET}"))
    remote.pin_to("login-b.example.org", str(hop))
    outer = remote.hop_script(remote.script(script, activate=True))
    r = subprocess.run(
        REMOTE_SHELL.split(), input=outer, capture_output=True, text=True, timeout=60
    )
    assert SECRET not in outer.split("<<", 1)[0]  # the hop's own line carries none
    return r.returncode, r.stdout, argv.read_text() if argv.exists() else ""


def test_a_script_sent_on_to_the_pinned_login_node_is_in_no_command_line(
    tmp_path: Path,
) -> None:
    """t16's guarantee across the hop to the endpoint's login node: the hop's command line is
    the host and `bash -l -s`; the script (the activate line's secret included) reaches that
    node's shell on stdin, unexpanded on the way (a quoted here-document whose delimiter is
    random: a script line that is a likely delimiter does not end it); its exit status comes
    back; the hop's own failure (ssh's 255) is told apart."""
    script = (
        'echo "CROSSFL_SEEN=$CLIENT_SECRET"\n'
        "cat <<'EOF'\nCROSSFL_HOP\nEOF\n"
        "echo 'CROSSFL_HOP_' \"$(echo expanded-there)\"\n"
        "exit 3"
    )
    rc, out, argv = _run_hop(tmp_path, script)
    assert rc == 3, out
    assert f"CROSSFL_SEEN={SECRET}" in out and "CROSSFL_HOP\n" in out
    assert "CROSSFL_HOP_ expanded-there" in out
    assert argv.splitlines() == ["login-b.example.org bash -l -s"]
    assert SECRET not in argv and "echo" not in argv
    failing = tmp_path / "failing"
    failing.mkdir()
    rc, out, _ = _run_hop(failing, "true", hop_rc=255)
    assert rc == 97 and "CROSSFL_HOP_FAILED=1" in out
