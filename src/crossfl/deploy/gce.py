"""The `globus-compute-endpoint` CLI on the login node: probe, configure, install, start,
stop, status, logs. Its failures are read and turned into one line with the next step."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from crossfl.deploy import coreconfig
from crossfl.deploy.remote import CommandResult, Remote
from crossfl.errors import UserError
from crossfl.quoting import home_path, quote

ENDPOINT_FILES = (
    "config.yaml",
    "user_config_template.yaml.j2",
    "user_config_schema.json",
    "user_environment.yaml",
)
GCE = "globus-compute-endpoint"
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*")  # state.HostName


@dataclass(frozen=True)
class LoginInfo:
    home: str
    uid: int
    root: str  # remote_root, absolute
    gc_dir: str  # $GLOBUS_COMPUTE_USER_DIR or ~/.globus_compute
    gce: str  # path of globus-compute-endpoint
    gce_version: str

    def endpoint_dir(self, name: str) -> str:
        return f"{self.gc_dir}/{name}"

    def resolve(self, path: str, raw_root: str) -> str:
        """A site path with $HOME/~ or the unresolved remote_root replaced by this login
        node's values."""
        return resolve_path(path, self.home, self.root, raw_root)


def resolve_path(path: str, home: str, root: str, raw_root: str) -> str:
    """`path` with the unresolved remote_root `raw_root` replaced by `root` and $HOME/~ by
    `home` (the login node's answers)."""
    root_expr = home_path(raw_root)
    path = home_path(path)
    if root and path.startswith(root_expr):
        path = root + path[len(root_expr) :]
    return path.replace("${HOME}", home).replace("$HOME", home)


def probe(
    remote: Remote,
    remote_root: str,
    site_file: str,
    *,
    version: bool = False,
    activate: bool = True,
) -> LoginInfo:
    """Where things are on the login node, and whether the endpoint CLI is there
    (and, with `version`, which version it is: one more Python start there). Without
    `activate` (the endpoint's venv is still to be made: crossfl.deploy.endpoint_env) the
    endpoint CLI is neither activated nor required."""
    script = (
        f"echo CROSSFL_HOME=$HOME; echo CROSSFL_UID=$(id -u); "
        f"echo CROSSFL_ROOT={quote(remote_root)}; "
        "echo CROSSFL_GCDIR=${GLOBUS_COMPUTE_USER_DIR:-$HOME/.globus_compute}; "
        f"g=$(command -v {GCE}); echo CROSSFL_GCE=$g; "
    )
    if version:
        script += f'[ -z "$g" ] || echo CROSSFL_GCE_VERSION=$({GCE} version 2>/dev/null | tail -1)'
    if remote.dry_run:
        remote.run(script, activate=activate)
        return LoginInfo("$HOME", -1, home_path(remote_root), "$HOME/.globus_compute", GCE, "?")
    r = remote.run(script, activate=activate)
    m = r.markers()
    t = remote.t
    if m.get("ACTIVATE_FAILED"):
        raise UserError(
            f"site {t.site}: deploy.python_activate failed on {t.label} ({r.tail()})",
            file=site_file,
            field="deploy.python_activate",
            fix="make it a shell line that puts globus-compute-endpoint on PATH "
            "there (e.g. `source ~/venvs/gc/bin/activate`)",
        )
    if not r.ok or "HOME" not in m:
        raise UserError(
            f"site {t.site}: the login shell on {t.label} failed ({r.tail()})",
            fix=f"check that `ssh {t.host} bash -lc true` works",
        )
    if not m.get("GCE") and activate:
        how = f"after `{t.activate}`" if t.activate else "(deploy.python_activate is unset)"
        raise UserError(
            f"site {t.site}: {GCE} is not on PATH on {t.label} {how}",
            file=site_file,
            field="deploy.python_activate",
            fix="install it there (pip install globus-compute-endpoint==4.19.0) and "
            "set deploy.python_activate to the line that activates it",
        )
    return LoginInfo(
        home=m["HOME"],
        uid=int(m.get("UID") or -1),
        root=m["ROOT"],
        gc_dir=m["GCDIR"],
        gce=m.get("GCE", ""),
        gce_version=m.get("GCE_VERSION", "")
        .removeprefix("Globus Compute endpoint version: ")
        .strip(),
    )


def configure(
    remote: Remote,
    info: LoginInfo,
    name: str,
    *,
    multi_user: bool,
    contact_email: str | None = None,
) -> bool:
    """`globus-compute-endpoint configure NAME` unless the endpoint directory exists."""
    ep = info.endpoint_dir(name)
    if not remote.dry_run:
        have = remote.run(f"test -f {quote(ep)}/config.yaml && echo yes || true")
        if have.stdout.strip() == "yes":
            return False
    flag = "true" if multi_user else "false"
    email = f" --contact-email {quote(contact_email)}" if contact_email else ""
    r = remote.run(
        f"{GCE} configure --multi-user {flag}{email} {quote(name)}",
        activate=True,
        label=f"{GCE} configure {name}",
    )
    if not r.ok:
        raise UserError(
            f"site {remote.t.site}: `{GCE} configure {name}` failed on "
            f"{remote.t.label}: {r.tail()}",
            fix="run it there by hand to see the whole message, then deploy again",
        )
    return True


def install(
    remote: Remote,
    info: LoginInfo,
    name: str,
    bundle_dir: str,
    *,
    core: dict[str, Any],
    previous: dict[str, Any],
) -> list[str]:
    """Copy the rendered endpoint files into the endpoint directory where they differ, and
    merge crossfl's keys (`core`) into its config.yaml, keeping the rest (coreconfig.py;
    `previous`: the list entries deploy put there last time). Returns the changed files."""
    ep = info.endpoint_dir(name)
    lines = [
        'inst() { n="$2.new"; cat > "$n"; chmod 600 "$n"; '
        'if cmp -s "$n" "$2"; then rm -f "$n"; '
        'else mv -f "$n" "$2"; echo CROSSFL_CHANGED=$1; fi; }'
    ]
    for f in ENDPOINT_FILES:
        if f != "config.yaml":
            src, dst = f"{bundle_dir}/endpoint/{f}", f"{ep}/{f}"
            lines.append(f"cat {quote(src)} | inst {f} {quote(dst)}")
    r = remote.run(
        "set -eo pipefail\n" + "\n".join(lines), label=f"install endpoint files into {ep}"
    )
    if not r.ok:
        raise UserError(
            f"site {remote.t.site}: installing the endpoint files into {ep} on "
            f"{remote.t.label} failed: {r.tail()}",
            fix="check permissions and space there, then deploy again",
        )
    changed = [
        ln.split("=", 1)[1] for ln in r.stdout.splitlines() if ln.startswith("CROSSFL_CHANGED=")
    ]
    if install_core(remote, ep, core, previous):
        changed.insert(0, "config.yaml")
    return changed


def install_core(remote: Remote, ep: str, core: dict[str, Any], previous: dict[str, Any]) -> bool:
    """Merge `core` into ep/config.yaml (0600, swapped in whole); True when it changed."""
    path = f"{ep}/config.yaml"
    keys = ", ".join(core)
    if remote.dry_run:
        remote.say(f"merge crossfl's keys ({keys}) into {path}, keeping the others")
        return True
    have = remote.run(f"cat {quote(path)} 2>/dev/null || true")
    site = remote.t.site
    try:
        text = coreconfig.merge(have.stdout, core, previous)
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(
            f"site {site}: {path} on {remote.t.label} is not a YAML mapping ({exc})",
            fix="repair it there (or move it aside for `globus-compute-endpoint configure` "
            "to write a new one), then deploy again",
        ) from None
    if text == have.stdout:
        return False
    remote.say(f"merge crossfl's keys ({keys}) into {path}")
    remote.write(path + ".new", text.encode(), 0o600)
    r = remote.run(f"mv -f {quote(path + '.new')} {quote(path)}")
    if not r.ok:
        raise UserError(
            f"site {site}: could not replace {path} on {remote.t.label}: {r.tail()}",
            fix="check permissions there, then deploy again",
        )
    return True


@dataclass(frozen=True)
class Runtime:
    running: bool
    pid: int | None
    endpoint_id: str | None
    configured: bool


def runtime(remote: Remote, info: LoginInfo, name: str) -> Runtime:
    """Read the endpoint directory: endpoint.json (written after registration) and daemon.pid.
    (`globus-compute-endpoint list` is not used: with texttable 1.7 it crashes.)"""
    ep = info.endpoint_dir(name)
    script = (
        f'd={quote(ep)}; [ -f "$d/config.yaml" ] && echo CROSSFL_CONFIGURED=1; '
        f'[ -f "$d/endpoint.json" ] && '
        f"echo CROSSFL_JSON=$(tr -d '\\n' < \"$d/endpoint.json\"); "
        f'p=$(cat "$d/daemon.pid" 2>/dev/null); '
        f'[ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo CROSSFL_PID=$p; true'
    )
    # the pid is only meaningful on the login node the endpoint was started on (pinned)
    if remote.dry_run:
        remote.run(script, pinned=True)
        return Runtime(False, None, None, False)
    m = remote.run(script, pinned=True).markers()
    eid = None
    if m.get("JSON"):
        try:
            eid = json.loads(m["JSON"]).get("endpoint_id")
        except ValueError:
            eid = None
    pid = int(m["PID"]) if m.get("PID", "").isdigit() else None
    return Runtime(pid is not None, pid, eid, bool(m.get("CONFIGURED")))


class StartFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


_NETWORK = (
    "ConnectionError",
    "Network failure",
    "NameResolutionError",
    "Failed to resolve",
    "Max retries exceeded",
    "Connection refused",
    "timed out",
    "NetworkError",
    "GlobusConnectionError",
    "Temporary failure in name resolution",
)


def classify(r: CommandResult) -> StartFailed:
    text = r.stdout + "\n" + r.stderr
    if "require a contact email" in text or "--contact-email" in text:
        return StartFailed(
            "email",
            "the endpoint runs as root, so Globus Compute makes it "
            "multi-user, which needs a contact email",
        )
    if "Please authenticate" in text or "Authorization Code" in text or "login_required" in text:
        return StartFailed("login", "the login node has no Globus credentials for the endpoint")
    if any(s in text for s in _NETWORK):
        return StartFailed("network", "the Globus Compute service could not be reached")
    if "already running" in text.lower() or "Another instance" in text:
        return StartFailed("running", "another instance of the endpoint is running")
    return StartFailed("other", r.tail())


def start(remote: Remote, name: str) -> None:
    r = remote.run(
        f"{GCE} start --detach {quote(name)} </dev/null",
        activate=True,
        timeout=300,
        label=f"{GCE} start --detach {name}",
        pinned=True,
    )
    if not r.ok:
        raise classify(r)


def stop(remote: Remote, name: str) -> CommandResult:
    return remote.run(
        f"{GCE} stop {quote(name)} </dev/null",
        activate=True,
        timeout=120,
        label=f"{GCE} stop {name}",
        pinned=True,
    )


def login_host(remote: Remote) -> str:
    """The login node a pinned command runs on: the recorded one, else the one reached (a
    host name, or the start is reported as failed: it is recorded and given to ssh)."""
    if remote.dry_run:
        return remote.pinned_host or "<login node>"
    host = remote.pinned_host or remote.landed()
    if not _HOST.fullmatch(host):
        raise UserError(
            f"site {remote.t.site}: the login node answered `hostname -f` with {host!r}, "
            "not a host name, so later commands cannot be sent back to it",
            fix=f"set deploy.host to the login node's name (an ~/.ssh/config alias for it) "
            f"and run `crossfl deploy {remote.t.site}` again",
        )
    return host


def logs(remote: Remote, info: LoginInfo, name: str, lines: int) -> CommandResult:
    return remote.run(f"tail -n {int(lines)} {quote(info.endpoint_dir(name))}/endpoint.log")


def queue(remote: Remote, query: str | None) -> CommandResult | None:
    """The user's pilot jobs, as the site's scheduler lists them (`Scheduler.query`)."""
    return remote.run(query) if query else None
