"""`crossfl deploy/status/logs/stop` against a real sshd (tests/sshd.py) and the real
globus-compute-endpoint CLI on the "login node" (this machine, with a temporary HOME).
Only the Globus web service is absent, so `start` fails; the tests check it fails clearly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from testkit.sdk_client import RecordingClient
from typer.testing import CliRunner

from crossfl.errors import UserError
from sshd import SshServer, free_port, sshd  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SITE = "localhost-ssh"
EP = "crossfl-localhost-ssh"


def run_cli(*args: str) -> tuple[int, str]:
    """Invoke the deploy commands as `crossfl` does: a UserError is one line and exit 2."""
    import typer

    from crossfl.cli import deploy as cli_deploy

    app = typer.Typer()
    cli_deploy.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep typer in multi-command mode
    res = CliRunner().invoke(app, list(args))
    out = res.output
    if isinstance(res.exception, UserError):
        return 2, out + "error: " + res.exception.render() + "\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, out


def error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out
    print(lines[0])  # visible with -s: the message a user sees
    return lines[0]


@pytest.fixture
def project(
    tmp_path: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch, sdk_client: type
) -> Path:
    """A project root with the localhost-ssh site, aimed at the test sshd; one remote root
    and one Globus Compute directory per test."""
    root = tmp_path / "proj"
    (root / "deploy" / "sites").mkdir(parents=True)
    (root / "overrides").mkdir()  # $CROSSFL_SITE_OVERRIDES below: it must exist
    shutil.copy(REPO / "deploy" / "sites" / f"{SITE}.yaml", root / "deploy" / "sites")
    for link in ("site_templates", "requirements", "pyproject.toml"):  # the version rule's
        (root / link).symlink_to(REPO / link)
    remote_root = sshd.home / tmp_path.name / "crossfl"
    gc_dir = sshd.home / tmp_path.name / "gc"
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(root / "overrides"))
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(sshd.ssh_config))
    monkeypatch.setenv("CROSSFL_SSH_PORT", str(sshd.port))
    monkeypatch.setenv("CROSSFL_REMOTE_ROOT", str(remote_root))
    monkeypatch.setenv("CROSSFL_REMOTE_ACTIVATE", activate_line(gc_dir))
    monkeypatch.delenv("CROSSFL_CONTACT_EMAIL", raising=False)
    return root


def activate_line(gc_dir: Path, extra: str = "") -> str:
    return f"export GLOBUS_COMPUTE_USER_DIR={gc_dir}{extra}; source {VENV_BIN}/activate"


def remote_root() -> Path:
    return Path(os.environ["CROSSFL_REMOTE_ROOT"])


def ep_dir() -> Path:
    line = os.environ["CROSSFL_REMOTE_ACTIVATE"]
    return Path(line.split("GLOBUS_COMPUTE_USER_DIR=", 1)[1].split(";", 1)[0].split()[0]) / EP


def state(project: Path) -> dict | None:
    p = project / "deploy" / "state" / f"{SITE}.json"
    return json.loads(p.read_text()) if p.exists() else None


def override(project: Path, data: dict) -> None:
    d = project / "overrides"
    d.mkdir(exist_ok=True)
    (d / f"{SITE}.yaml").write_text(yaml.safe_dump(data))


# -- the state file ------------------------------------------------------------------------------


def test_state_file_claims_only_what_happened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossfl import state as st

    monkeypatch.setenv("CROSSFL_ROOT", str(tmp_path))
    with pytest.raises(UserError, match="never deployed"):
        st.require_endpoint_id("x")
    s = st.DeployState(site="x", host="h", remote_root="/r", endpoint=st.EndpointState(name="e"))
    assert s.phase == "new"
    path = st.save_state(s)
    assert st.load_state("x") == s and [p.name for p in path.parent.iterdir()] == ["x.json"]
    with pytest.raises(UserError, match="no registered endpoint"):
        st.require_endpoint_id("x")
    s.endpoint.configured = True
    s.endpoint.started = True  # without an endpoint id: refused, and the file keeps the old state
    with pytest.raises(ValueError, match="registered endpoint_id"):
        st.save_state(s)
    assert st.load_state("x").phase == "new"
    s.endpoint.endpoint_id = "6f1c3a1e-0000-4000-8000-000000000000"
    st.save_state(s)
    assert st.require_endpoint_id("x") == s.endpoint.endpoint_id
    assert st.load_state("x").phase == "started"
    path.write_text("{")
    with pytest.raises(UserError, match="unreadable"):
        st.load_state("x")


# -- the deploy itself --------------------------------------------------------------------------


def test_deploy_configures_is_idempotent_and_fails_start_clearly(
    project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli("deploy", SITE, "--no-start")
    print(out)
    assert code == 0, out
    rendered = project / "build" / "sites" / SITE / "endpoint"
    root = remote_root()
    for sub in ("bundle", "images", "data"):
        assert (root / sub).is_dir()
    for f in (
        "config.yaml",
        "user_config_template.yaml.j2",
        "user_config_schema.json",
        "user_environment.yaml",
        "user_config.example.yaml",
    ):
        assert (root / "bundle" / "endpoint" / f).read_bytes() == (rendered / f).read_bytes()
    # globus-compute-endpoint configure ran (real CLI) and our files replaced its defaults
    ep = ep_dir()
    for f in ("user_config_template.yaml.j2", "user_config_schema.json", "user_environment.yaml"):
        assert (ep / f).read_bytes() == (rendered / f).read_bytes(), f
    core = yaml.safe_load((ep / "config.yaml").read_text())
    assert core["display_name"] == "crossfl localhost-ssh"
    if "user_config_template_path" in core:  # local paths rewritten to the endpoint dir
        assert core["user_config_template_path"] == str(ep / "user_config_template.yaml.j2")
    st = state(project)
    assert st and st["endpoint"]["configured"] and not st["endpoint"]["started"]
    assert st["endpoint"]["endpoint_id"] is None and st["remote_root"] == str(root)
    assert st["bundle_sha256"] == (root / "bundle" / ".crossfl-bundle.sha256").read_text().strip()

    # nothing changed: nothing moves, and it says so
    stamps = {p: p.stat().st_mtime_ns for p in [*root.rglob("*"), *ep.iterdir()] if p.is_file()}
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    assert "nothing changed" in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert state(project)["last_result"] == "unchanged"

    # a changed site re-renders, re-uploads, reinstalls the changed endpoint file only
    override(project, {"endpoint": {"display_name": "crossfl changed"}})
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    assert "endpoint files: config.yaml" in out.replace("\n", " ")
    assert yaml.safe_load((ep / "config.yaml").read_text())["display_name"] == "crossfl changed"
    assert state(project)["last_result"] == "ok"

    # start as root: Globus Compute makes it multi-user, which needs an email -> one line
    code, out = run_cli("deploy", SITE)
    assert code == 2
    line = error_line(out)
    assert "root" in line and "contact email" in line and SITE in line
    assert state(project)["endpoint"]["endpoint_id"] is None

    # with an email and (fake) client credentials, start reaches for the Globus service: offline
    monkeypatch.setenv(
        "CROSSFL_REMOTE_ACTIVATE",
        activate_line(
            ep.parent,
            "; export GLOBUS_COMPUTE_CLIENT_ID=00000000-0000-4000-8000-000000000001"
            " GLOBUS_COMPUTE_CLIENT_SECRET=not-a-secret",
        ),
    )
    code, out = run_cli("deploy", SITE, "--contact-email", "ops@example.org")
    assert code == 2, out
    line = error_line(out)
    assert "Globus Compute service could not be reached" in line, line
    assert "configured" in line and f"crossfl deploy {SITE}" in line
    assert "email: ops@example.org" in (ep / "config.yaml").read_text()
    st = state(project)
    assert st["endpoint"]["configured"] and not st["endpoint"]["started"]
    assert st["endpoint"]["endpoint_id"] is None and st["last_result"] == "failed"
    assert not (ep / "endpoint.json").exists()

    # status, logs, stop read the same endpoint
    code, out = run_cli("status", SITE)
    assert code == 0, out
    assert "not running" in out and "configured" in out and "4.19.0" in out
    code, out = run_cli("status")  # every deployed site
    assert code == 0 and "endpoint process" in out and SITE in out
    code, out = run_cli("logs", SITE, "-n", "5")
    assert code == 0, out
    code, out = run_cli("stop", SITE)
    assert code == 0 and "nothing to stop" in out


def test_each_step_runs_on_its_own(project: Path) -> None:
    """The deploy steps, named and in order, each one runnable alone on a Deployment."""
    from crossfl.deploy import flow, steps

    assert [name for name, _ in steps.STEPS] == [
        "layout",
        "python",
        "bundle",
        "image",
        "pin",
        "data",
        "functions",
        "endpoint",
        "start",
    ]
    with flow.deployment(SITE, start=False) as d:
        assert not remote_root().exists()
        steps.layout(d)
        assert all((remote_root() / sub).is_dir() for sub in ("bundle", "images", "data"))
        assert not any((remote_root() / "bundle").iterdir())
        steps.python(d)  # the site names no deploy.python: its python_activate stands
        assert d.state.endpoint_env is None
        steps.bundle(d)
        digest_file = remote_root() / "bundle" / ".crossfl-bundle.sha256"
        assert digest_file.read_text().strip() == d.digest and d.out.changed == ["bundle"]
        assert state(project) is None  # a step changes the state; deploy_site saves it
        d.record()
        st = state(project)
        assert st["bundle_sha256"] == d.digest and not st["endpoint"]["configured"]
        steps.image(d)  # no container: nothing to stage
        steps.pin(d)  # no podman-hpc image to pin by its ID
        steps.data(d)  # no --data
        assert d.out.changed == ["bundle"] and not ep_dir().exists()
        steps.functions(d)
        assert set(d.state.functions) == {"train", "evaluate"}
        steps.endpoint(d)
        assert (ep_dir() / "user_config_schema.json").is_file() and d.state.endpoint.configured
        steps.start(d)  # --no-start
        assert not d.state.endpoint.started and "endpoint started" not in d.out.changed


def test_data_upload_only_when_asked(project: Path, tmp_path: Path) -> None:
    data = tmp_path / "chem"
    (data / "split").mkdir(parents=True)
    (data / "train.jsonl").write_text('{"input": "CCO", "output": "ethanol"}\n')
    (data / "split" / "val.jsonl").write_text('{"input": "C", "output": "methane"}\n')
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and not any((remote_root() / "data").iterdir())
    code, out = run_cli("deploy", SITE, "--no-start", "--data", str(data))
    assert code == 0, out
    dest = remote_root() / "data" / "chem"
    assert (dest / "train.jsonl").read_bytes() == (data / "train.jsonl").read_bytes()
    assert (dest / "split" / "val.jsonl").read_bytes() == (
        data / "split" / "val.jsonl"
    ).read_bytes()
    assert [d["remote_path"] for d in state(project)["data"]] == [str(dest)]
    code, out = run_cli("deploy", SITE, "--no-start", "--data", str(data))
    assert code == 0 and "nothing changed" in out


def test_cli_entry_point_prints_one_line(project: Path) -> None:
    """The installed `crossfl` command: a deploy fault is one line on stderr and exit 2."""
    shutil.copy(REPO / "deploy" / "sites" / "local.yaml", project / "deploy" / "sites")
    res = subprocess.run(
        [str(VENV_BIN / "crossfl"), "deploy", "local"],
        capture_output=True,
        text=True,
        cwd=project,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "site local has no deploy block" in lines[0], res.stderr


def test_dry_run_prints_and_does_nothing(project: Path) -> None:
    for args in (
        ["deploy", SITE, "--data", str(project / "deploy")],
        ["status", SITE],
        ["logs", SITE],
        ["stop", SITE],
    ):
        code, out = run_cli(*args, "--dry-run")
        assert code == 0, out
        assert "[dry-run]" in out and "127.0.0.1" in out
    code, out = run_cli("deploy", SITE, "--dry-run")
    print(out)
    assert "upload" in out and "globus-compute-endpoint configure" in out
    assert "globus-compute-endpoint start" in out
    assert not remote_root().exists() and state(project) is None


# -- faults: one line naming the site and the next step; no state claiming it happened ------


def test_closed_port(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_SSH_PORT", str(free_port()))
    code, out = run_cli("deploy", SITE)
    line = error_line(out)
    assert code == 2 and SITE in line and "connection refused" in line and "fix:" in line
    assert state(project) is None


def test_refused_key(project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = sshd.client_config(key=sshd.other_key, name="ssh-config-other")
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(cfg))
    code, out = run_cli("deploy", SITE)
    line = error_line(out)
    assert code == 2 and SITE in line and "refused the key" in line and "IdentityFile" in line
    assert state(project) is None


# -- the kit's functions only; the admin's config kept -------------------------------------------


def test_functions_registered_once_and_an_admins_keys_kept(
    project: Path, sdk_client: type[RecordingClient]
) -> None:
    import uuid

    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    st = state(project)
    ids = {kind: rec["function_id"] for kind, rec in st["functions"].items()}
    assert set(ids) == {"train", "evaluate"}
    # registered by reference: the SDK's payload names the client's functions, no source text
    assert [r["function_name"] for r in sdk_client.registered] == ["train_round", "evaluate"]
    assert all(r["meta"]["serde_identifier"] == "01" for r in sdk_client.registered)  # DillCode
    cfg = ep_dir() / "config.yaml"
    core = yaml.safe_load(cfg.read_text())
    assert core["allowed_functions"] == [ids["train"], ids["evaluate"]]
    assert cfg.stat().st_mode & 0o777 == 0o600
    example = remote_root() / "bundle" / "endpoint" / "user_config.example.yaml"
    assert yaml.safe_load(example.read_text())["engine"]["allowed_serializers"] == [
        "globus_compute_sdk.serialize.DillCode",
        "globus_compute_sdk.serialize.DillDataBase64",
    ]

    # what a facility admin adds: identity mapping, a policy, admins, a function of their own
    theirs, policy, admin = (str(uuid.uuid4()) for _ in range(3))
    text = cfg.read_text().replace(f"- {ids['evaluate']}\n", f"- {ids['evaluate']}\n- {theirs}\n")
    text += (
        "# added by the facility\n"
        "identity_mapping_config_path: /etc/globus/idmap.json\n"
        f"authentication_policy: {policy}\n"
        "admins:\n  # Samir (sysadmin, HPC services)\n"
        f"  - {admin}\n"
    )
    cfg.write_text(text)
    override(project, {"endpoint": {"display_name": "crossfl renamed"}})
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    kept = cfg.read_text()
    core = yaml.safe_load(kept)
    assert core["display_name"] == "crossfl renamed"
    assert core["identity_mapping_config_path"] == "/etc/globus/idmap.json"
    assert core["authentication_policy"] == policy and core["admins"] == [admin]
    assert core["allowed_functions"] == [ids["train"], ids["evaluate"], theirs]
    assert "# Samir (sysadmin, HPC services)" in kept and "# added by the facility" in kept
    assert len(sdk_client.registered) == 2  # registered once: the ids stay

    code, out = run_cli("deploy", SITE, "--no-start")  # nothing changed: nothing moves
    assert code == 0 and "nothing changed" in out and cfg.read_text() == kept

    # the site's own policy and admins (schema: endpoint.authentication_policy, admins) win
    # over the policy there; the admins there are kept beside the site's
    ours_policy, ours_admin = str(uuid.uuid4()), str(uuid.uuid4())
    override(
        project,
        {
            "endpoint": {
                "display_name": "crossfl renamed",
                "authentication_policy": ours_policy,
                "admins": [ours_admin],
            }
        },
    )
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    core = yaml.safe_load(cfg.read_text())
    assert core["authentication_policy"] == ours_policy
    assert core["admins"] == [ours_admin, admin]
    assert core["identity_mapping_config_path"] == "/etc/globus/idmap.json"
    override(project, {"endpoint": {"display_name": "crossfl renamed"}})  # the site drops them
    code, out = run_cli("deploy", SITE, "--no-start")
    core = yaml.safe_load(cfg.read_text())
    assert core["admins"] == [admin] and "authentication_policy" not in core


# -- host keys: known works (every test above), unknown or changed stops deploy and doctor ------


def doctor_cli(*args: str) -> tuple[int, str]:
    import typer

    from crossfl.cli import doctor as cli_doctor

    app = typer.Typer()
    cli_doctor.register(app)
    app.command("noop", hidden=True)(lambda: None)
    res = CliRunner().invoke(app, ["doctor", *args])
    if isinstance(res.exception, UserError):
        return 2, res.output + "error: " + res.exception.render() + "\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_unknown_host_key_stops_deploy_and_doctor(
    project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = sshd.root / "known_hosts_empty"
    empty.write_text("")
    cfg = sshd.client_config(name="ssh-config-unknown", known_hosts=empty)
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(cfg))
    before = sshd.logins()
    for cli in (lambda: run_cli("deploy", SITE), lambda: doctor_cli(SITE)):
        code, out = cli()
        line = error_line(out)
        assert code == 2 and SITE in line and f"[127.0.0.1]:{sshd.port}" in line, line
        assert "not in your known_hosts" in line and str(empty) in line
        assert "ssh-keyscan -p" in line and "fingerprint" in line
    assert sshd.logins() == before  # refused before authenticating: no key, no bundle sent
    assert state(project) is None and not remote_root().exists()


def test_changed_host_key_stops_deploy_and_doctor(
    project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # known_hosts names another key for this host and port: what a machine in the path shows
    wrong = sshd.known_hosts_with(sshd.root / "other_key.pub", "known_hosts_wrong")
    monkeypatch.setenv(
        "CROSSFL_SSH_CONFIG",
        str(sshd.client_config(name="ssh-config-changed", known_hosts=wrong)),
    )
    for cli in (lambda: run_cli("deploy", SITE), lambda: doctor_cli(SITE)):
        code, out = cli()
        line = error_line(out)
        assert code == 2 and SITE in line and "has changed" in line, line
        assert "SHA256:" in line and f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in line
    assert state(project) is None and not remote_root().exists()


def test_every_proxyjump_hop_is_verified(
    project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The login node reached through a jump host (ProxyJump, here the same sshd under
    another name): the hop's own known_hosts must hold its key too."""
    empty = sshd.root / "known_hosts_jump_empty"
    empty.write_text("")

    def config(name: str, jump_known: Path) -> Path:
        key = f"  User {sshd.user}\n  IdentityFile {sshd.client_key}\n  IdentitiesOnly yes\n"
        path = sshd.root / name
        path.write_text(
            f"Host jumphost\n  HostName 127.0.0.1\n  Port {sshd.port}\n{key}"
            f"  UserKnownHostsFile {jump_known}\n"
            f"Host 127.0.0.1\n  Port {sshd.port}\n{key}  ProxyJump jumphost\n"
            f"  UserKnownHostsFile {sshd.known_hosts}\n"
        )
        return path

    # deployed through the hop first: status asks no login node of a never-deployed site
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(config("ssh-config-jump", sshd.known_hosts)))
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(config("ssh-config-jump-unknown", empty)))
    code, out = run_cli("status", SITE)
    line = error_line(out)
    assert code == 2 and "not in your known_hosts" in line and f":{sshd.port}" in line, line
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(config("ssh-config-jump", sshd.known_hosts)))
    code, out = run_cli("status", SITE)
    assert code == 0 and "endpoint process" in out, out


def test_openssh_channel_checks_host_keys_too(
    project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system ssh (no master running, channel forced) is told StrictHostKeyChecking=yes,
    whatever the user's config says."""
    empty = sshd.root / "known_hosts_empty2"
    empty.write_text("")
    cfg = sshd.client_config(
        name="ssh-config-openssh-unknown", known_hosts=empty, extra="  StrictHostKeyChecking no\n"
    )
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(cfg))
    monkeypatch.setenv("CROSSFL_SSH_CHANNEL", "openssh")
    code, out = run_cli("deploy", SITE, "--no-start")
    line = error_line(out)
    assert code == 2 and "host key" in line, line
    assert state(project) is None and not remote_root().exists()


# -- secrets: not in output, remote command lines, state or world-readable files -----------------


def test_secrets_stay_out_of_output_argv_and_state(
    project: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-" + hashlib.sha256(str(project).encode()).hexdigest()[:16]
    token = "tok-" + secret[::-1]
    monkeypatch.setenv("CROSSFL_TEST_TOKEN", token)  # a secret of this environment
    argv = remote_root().parent / "argv.txt"
    gc_dir = ep_dir().parent
    # The activate line exports a client secret and records the command lines of the remote
    # shell and of its parent: what any user of the login node sees in `ps`.
    record = (
        f"tr '\\0' ' ' </proc/$$/cmdline >>{argv}; echo >>{argv}; "
        f"tr '\\0' ' ' </proc/$PPID/cmdline >>{argv}; echo >>{argv}"
    )
    monkeypatch.setenv(
        "CROSSFL_REMOTE_ACTIVATE",
        activate_line(gc_dir, f"; export GLOBUS_COMPUTE_CLIENT_SECRET={secret}; {record}"),
    )
    override(project, {"endpoint": {"display_name": "crossfl ${CROSSFL_TEST_TOKEN}"}})
    code, out = run_cli("deploy", SITE, "--dry-run")
    assert code == 0, out
    assert "GLOBUS_COMPUTE_CLIENT_SECRET=***" in out
    assert secret not in out and token not in out
    # the rendered file that carries the token is the user's alone; the others as the umask says
    rendered = project / "build" / "sites" / SITE / "endpoint"
    umask = os.umask(0o022)
    os.umask(umask)
    assert (rendered / "config.yaml").stat().st_mode & 0o777 == 0o600
    assert (rendered / "user_config_schema.json").stat().st_mode & 0o777 == 0o666 & ~umask

    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    assert secret not in out and token not in out
    seen = argv.read_text()
    print(seen)
    assert "bash -l -s" in seen and secret not in seen and "CLIENT_SECRET" not in seen
    assert (remote_root() / "bundle" / "endpoint" / "config.yaml").stat().st_mode & 0o77 == 0
    assert secret not in (project / "deploy" / "state" / f"{SITE}.json").read_text()

    # a failure that quotes the activate line: redacted in the message and the state file
    monkeypatch.setenv(
        "CROSSFL_REMOTE_ACTIVATE",
        f"export GLOBUS_COMPUTE_CLIENT_SECRET={secret}; source /nonexistent/bin/activate",
    )
    code, out = run_cli("deploy", SITE)
    line = error_line(out)
    assert "python_activate failed" in line and secret not in out


@pytest.mark.parametrize(
    "activate, expect",
    [
        ("source /nonexistent/venv/bin/activate", "deploy.python_activate failed"),
        ("true", "globus-compute-endpoint is not on PATH"),
    ],
)
def test_missing_endpoint_cli(
    project: Path, monkeypatch: pytest.MonkeyPatch, activate: str, expect: str
) -> None:
    monkeypatch.setenv("CROSSFL_REMOTE_ACTIVATE", activate)
    code, out = run_cli("deploy", SITE)
    line = error_line(out)
    assert code == 2 and SITE in line and expect in line and "python_activate" in line
    assert state(project) is None and not remote_root().exists()


def test_site_without_deploy_block(project: Path) -> None:
    shutil.copy(REPO / "deploy" / "sites" / "local.yaml", project / "deploy" / "sites")
    code, out = run_cli("deploy", "local")
    line = error_line(out)
    assert code == 2 and "site local has no deploy block" in line and "deploy.host" in line
    assert not (project / "deploy" / "state").exists()


# -- the image: resumable, verified, never truncated under its final name ---------------------

IMAGE_BYTES = 3 * (1 << 20) + 12345


@pytest.fixture
def image_site(project: Path) -> tuple[Path, Path]:
    override(
        project,
        {
            "container": {
                "runtime": "apptainer",
                "images": {"cpu": "{{remote_root}}/images/crossfl-cpu.sif"},
            }
        },
    )
    img = project / "build" / "images" / "crossfl-cpu.sif"
    img.parent.mkdir(parents=True)
    img.write_bytes(os.urandom(IMAGE_BYTES))
    return img, remote_root() / "images" / "crossfl-cpu.sif"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_image_upload_resumes_and_verifies(project: Path, image_site: tuple[Path, Path]) -> None:
    img, dest = image_site
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(img.read_bytes()[: 1 << 20])  # what an interrupted upload leaves
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    assert "resuming at byte 1,048,576" in out
    assert sha(dest) == sha(img) and not part.exists()
    st = state(project)
    assert st["image"]["sha256"] == sha(img) and st["image"]["remote_path"] == str(dest)

    # a corrupt partial (not a prefix of the image): the checksum catches it, upload restarts
    dest.unlink()
    dest.with_name(dest.name + ".sha256").unlink()
    part.write_bytes(os.urandom(1 << 20))
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    assert "did not verify" in out.replace("\n", " ")
    assert sha(dest) == sha(img) and not part.exists()

    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "nothing changed" in out


def test_image_upload_killed_midway_resumes(project: Path, image_site: tuple[Path, Path]) -> None:
    """Kill the real `crossfl deploy` process while the image is on its way: the final name
    never appears; the next deploy resumes from the partial file and verifies it."""
    import signal
    import time

    img, dest = image_site
    img.write_bytes(os.urandom(64 << 20))
    part = dest.with_name(dest.name + ".part")
    proc = subprocess.Popen(
        [str(VENV_BIN / "crossfl"), "deploy", SITE, "--no-start"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if part.exists() and part.stat().st_size >= (2 << 20):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the upload ended before it could be interrupted"
    assert not dest.exists()  # no truncated image under the final name
    kept = part.stat().st_size
    assert 0 < kept < img.stat().st_size
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    assert "resuming at byte" in out
    assert sha(dest) == sha(img) and not part.exists()


def test_image_upload_disk_full(project: Path, image_site: tuple[Path, Path]) -> None:
    """Quota/space exhaustion simulated with a real 1 MiB tmpfs mounted on the remote images
    directory (root can mount here); skipped, saying so, where mounting is not permitted."""
    img, dest = image_site
    dest.parent.mkdir(parents=True)
    mnt = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dest.parent)],
        capture_output=True,
        text=True,
    )
    if mnt.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill the disk: {mnt.stderr.strip()}")
    try:
        code, out = run_cli("deploy", SITE, "--no-start")
        line = error_line(out)
        assert code == 2 and SITE in line and "remote write error" in line, line
        assert "bytes free" in line and "next deploy resumes" in line and "fix:" in line
        assert not dest.exists()  # never a truncated image under the final name
        st = state(project)
        assert st is not None and st["image"] is None and not st["endpoint"]["configured"]
    finally:
        subprocess.run(["umount", str(dest.parent)], check=False)


def test_reuses_an_openssh_master_connection(
    project: Path, sshd: SshServer, image_site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user of a one-time-password facility logs in once (`ssh -fN host` with ControlMaster
    in ~/.ssh/config); deploy then runs every command and upload through that master: the
    server sees no new login."""
    import tempfile

    sockdir = Path(tempfile.mkdtemp(prefix="cfl-", dir="/tmp"))  # unix socket paths are short
    cfg = sshd.client_config(
        name="ssh-config-mux",
        extra=(f"  ControlMaster auto\n  ControlPath {sockdir}/%C\n  ControlPersist 120\n"),
    )
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(cfg))
    ssh = ["ssh", "-F", str(cfg), "-p", str(sshd.port)]
    subprocess.run([*ssh, "-fN", "127.0.0.1"], check=True, timeout=30)
    try:
        img, dest = image_site
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(img.read_bytes()[: (1 << 20) + 7])
        before = sshd.logins()
        code, out = run_cli("deploy", SITE, "--no-start")
        assert code == 0, out
        assert "using your OpenSSH master connection" in out
        assert "resuming at byte 1,048,583" in out
        assert sha(dest) == sha(img) and not part.exists()
        rendered = project / "build" / "sites" / SITE / "endpoint" / "user_config_template.yaml.j2"
        assert (ep_dir() / rendered.name).read_bytes() == rendered.read_bytes()
        assert sshd.logins() == before  # no new authentication: all went through the master
    finally:
        subprocess.run([*ssh, "-O", "exit", "127.0.0.1"], capture_output=True, timeout=30)
        shutil.rmtree(sockdir, ignore_errors=True)


# -- the endpoint's own environment and the version rule ---------------------------------------

PY311 = Path(sys._base_executable).resolve()  # the interpreter the test venv was made with
PY312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")  # a 3.12, as cray-python now is


def standalone_tarball(tmp: Path) -> tuple[Path, str]:
    """A tarball laid out as python-build-standalone's install_only (python/bin/python3),
    its interpreter this machine's Python 3.11 (a symlink: no download here)."""
    import tarfile

    tar = tmp / "cpython-3.11-install_only.tar.gz"
    with tarfile.open(tar, "w:gz") as out:
        for name in ("python", "python/bin"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.addfile(info)
        link = tarfile.TarInfo("python/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, str(PY311)
        out.addfile(link)
    return tar, hashlib.sha256(tar.read_bytes()).hexdigest()


def endpoint_python(project: Path, python: dict, venv: Path) -> None:
    gc = ep_dir().parent
    override(
        project,
        {
            "deploy": {
                "python": python,
                "venv": str(venv),
                # the derived line plus this test's own Globus Compute directory
                "python_activate": f"export GLOBUS_COMPUTE_USER_DIR={gc}; "
                f"source {venv}/bin/activate",
            }
        },
    )


def test_deploy_makes_the_endpoint_env_pinned_and_recorded(project: Path, tmp_path: Path) -> None:
    """A standalone CPython fetched by URL and sha256, unpacked once; the venv made on it with
    requirements/endpoint.txt at constraints.txt's versions (real pip); the versions recorded
    in deploy/state/; the endpoint configured from that venv; a second deploy changes nothing."""
    from crossfl.deploy.endpoint_env import rule

    tar, digest = standalone_tarball(tmp_path)
    venv = remote_root().parent / "endpoint-venv"
    endpoint_python(project, {"standalone": {"url": tar.as_uri(), "sha256": digest}}, venv)
    code, out = run_cli("deploy", SITE, "--no-start")
    print(out)
    assert code == 0, out
    env = state(project)["endpoint_env"]
    assert {k: env["versions"][k] for k in rule()} == rule()  # python 3.11 and the pins
    assert env["source"] == f"standalone {tar.as_uri()} sha256:{digest}"
    assert env["venv"] == str(venv) and json.loads((venv / ".crossfl-endpoint.json").read_text())
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout
    assert "globus-compute-endpoint==4.19.0" in pip and "torch" not in pip  # the endpoint's only
    assert (ep_dir() / "config.yaml").is_file()  # configured by the venv's own CLI
    assert "endpoint environment" in out
    stamp = (venv / ".crossfl-endpoint.json").stat().st_mtime_ns
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "nothing changed" in out, out
    assert "endpoint environment unchanged" in out
    assert (venv / ".crossfl-endpoint.json").stat().st_mtime_ns == stamp


def test_a_standalone_python_with_another_sha256_is_refused(
    project: Path, sshd: SshServer, tmp_path: Path
) -> None:
    tar, _ = standalone_tarball(tmp_path)
    venv = remote_root().parent / "endpoint-venv"
    endpoint_python(project, {"standalone": {"url": tar.as_uri(), "sha256": "0" * 64}}, venv)
    code, out = run_cli("deploy", SITE, "--no-start")
    line = error_line(out)
    assert code == 2 and "its sha256 is" in line and "deploy.python.standalone" in line, line
    assert not venv.exists()
    assert not (sshd.home / ".crossfl" / "python" / ("0" * 16)).exists()  # nothing unpacked


@pytest.mark.skipif(not PY312.is_file(), reason="no Python 3.12 on this machine")
def test_a_module_python_of_another_minor_is_refused(
    project: Path, sshd: SshServer, tmp_path: Path
) -> None:
    """Frontier's case: the facility module gives Python 3.12 (cray-python since 2026-07-01);
    the rule runs 3.11, so deploy stops in one line before making anything. (`module` here is a
    stand-in shell function of the login shell, as Lmod's is.)"""
    profile = sshd.home / ".bash_profile"
    profile.write_text(
        f'module() {{ [ "$1 $2" = "load cray-python" ] && export PATH={PY312.parent}:$PATH; }}\n'
    )
    try:
        venv = remote_root().parent / "endpoint-venv"
        endpoint_python(project, {"module": "cray-python", "command": "python3.12"}, venv)
        code, out = run_cli("deploy", SITE, "--no-start")
        line = error_line(out)
        assert code == 2 and "module cray-python gives Python 3.12" in line, line
        assert "version rule runs Python 3.11" in line and "deploy.python.module" in line
        assert not venv.exists()
    finally:
        profile.unlink()


def test_the_server_side_of_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """This checkout's own environment is checked first: a drifted pin stops deploy (and
    doctor) in one line, before anything is started at a site."""
    from crossfl.deploy import endpoint_env

    endpoint_env.check_server()  # this checkout's venv follows the rule
    drifted = {**endpoint_env.local_versions(), "parsl": "2025.1.1"}
    monkeypatch.setattr(endpoint_env, "local_versions", lambda: drifted)
    with pytest.raises(UserError, match=r"breaks the version rule: parsl 2025.1.1 \(want"):
        endpoint_env.check_server()


# -- the endpoint's login node ------------------------------------------------------------------


def test_endpoint_operations_go_to_its_login_node(
    project: Path, sshd: SshServer, tmp_path: Path
) -> None:
    """Login hosts are load-balanced: the endpoint's process runs on the node it was started
    on (recorded), and status and stop reach that node from wherever the connection landed.
    Here the recorded node is `login-b` (an alias of this sshd in the login node's own SSH
    config) and the hop line logs its command line: the host and `bash -l -s`, never the
    script (it travels on stdin, as every script does: nothing in `ps` on either node)."""
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    ep = ep_dir()
    sleeper = subprocess.Popen(["sleep", "600"])  # stands in for the endpoint's daemon
    try:
        (ep / "daemon.pid").write_text(f"{sleeper.pid}\n")
        (ep / "endpoint.json").write_text('{"endpoint_id": "6f1c3a1e-0000-4000-8000-00000000000b"}')
        cfg = sshd.client_config(name="login-node-config")
        cfg.write_text(
            cfg.read_text().replace("Host 127.0.0.1", "Host login-b\n  HostName 127.0.0.1")
        )
        hop_log = tmp_path / "hops.log"
        hop = tmp_path / "hop.sh"
        hop.write_text(f'#!/bin/bash\necho "argv: $*" >> {hop_log}\nexec ssh -F {cfg} "$@"\n')
        hop.chmod(0o755)
        override(project, {"deploy": {"login_hop": str(hop)}})
        st = json.loads((project / "deploy" / "state" / f"{SITE}.json").read_text())
        st["endpoint"].update(started=True, login_host="login-b")
        st["endpoint"]["endpoint_id"] = "6f1c3a1e-0000-4000-8000-00000000000b"
        (project / "deploy" / "state" / f"{SITE}.json").write_text(json.dumps(st))
        before = sshd.logins()
        code, out = run_cli("status", SITE)
        assert code == 0, out
        assert f"running (pid {sleeper.pid})" in out and "login-b (recorded at start)" in out
        hops = hop_log.read_text().splitlines()
        assert hops and all(h == "argv: login-b bash -l -s" for h in hops), hops
        assert sshd.logins() >= before + 2  # our connection, and the hop from the login node
        # a recorded node that cannot be reached: one line, saying what to do
        st["endpoint"]["login_host"] = "login-gone.invalid"
        (project / "deploy" / "state" / f"{SITE}.json").write_text(json.dumps(st))
        code, out = run_cli("stop", SITE)
        line = error_line(out)
        assert code == 2 and "runs on the login node login-gone.invalid" in line, line
        assert "remove endpoint.login_host" in line
        assert sleeper.poll() is None  # nothing was signalled on the wrong node
    finally:
        sleeper.kill()
        sleeper.wait()
