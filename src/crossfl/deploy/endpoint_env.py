"""The version rule, and the endpoint's own environment on the login node (deploy's `python`
step).

**The rule.** Three places exchange Parsl and Globus Compute messages: this checkout's
environment (the server: the SDK that packs tasks, and local engines), each login node's
endpoint (its interchange, and on MPI sites its one worker per pilot), and each image (the
workers). All three run the same Python minor, pyproject's `requires-python` (3.11), and the
same versions of parsl, dill, globus-compute-endpoint and globus-compute-sdk,
requirements/constraints.txt's (`crossfl.images.MUST_AGREE`). Nothing downstream checks this
for us: GlobusComputeEngine switches Parsl's own check off
(globus_compute_endpoint/engines/globus_compute.py in globus-compute-endpoint 4.19.0,
`self.executor._check_python_mismatch = False`, which skips the interchange's
`python_mismatch or parsl_mismatch` refusal, parsl/executors/high_throughput/interchange.py in
parsl 2026.10.26), so a mismatch would surface later, as a serialization or wire-format failure.
So `crossfl deploy` and `crossfl doctor` refuse a mismatch themselves, in one line: the server's
environment before anything is started, the endpoint's interpreter before its venv is made, its
installed versions after, the image by its labels (crossfl.deploy.image).

**The endpoint's environment.** A venv at `deploy.venv` (default ~/.crossfl/SITE/endpoint: the
home directory, which the facilities do not purge and compute nodes can read) made with the
interpreter `deploy.python` names: a facility module where one provides the rule's minor, a
python-build-standalone CPython pinned by URL and sha256 otherwise (Frontier's `cray-python`
is 3.12 only since 2026-07-01), or a path. It holds requirements/endpoint.txt at
requirements/constraints.txt's versions. A stamp in the venv (`.crossfl-endpoint.json`) names
the inputs it was made from; a deploy whose inputs did not change leaves it alone. What it holds
is recorded in deploy/state/SITE.json (`endpoint_env`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from crossfl import paths
from crossfl.deploy.remote import Remote
from crossfl.errors import UserError
from crossfl.images import MUST_AGREE, python_minor, read_constraints
from crossfl.quoting import quote
from crossfl.state import EndpointEnvState, now

if TYPE_CHECKING:
    from crossfl.deploy.deployment import Deployment
    from crossfl.sites import EndpointPython, Site

STAMP = ".crossfl-endpoint.json"
INPUTS = ".crossfl-inputs"
PYTHONS = "~/.crossfl/python"  # where standalone interpreters are unpacked, one per sha256
PIP_TIMEOUT_S = 1800

# One JSON line: the interpreter's version and the rule's packages as installed.
VERSIONS_PY = """\
import json, sys
from importlib import metadata
v = {"python": "%d.%d" % sys.version_info[:2], "python_full": "%d.%d.%d" % sys.version_info[:3]}
for name in ("parsl", "dill", "globus-compute-endpoint", "globus-compute-sdk"):
    try:
        v[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        v[name] = None
print("CROSSFL_VERSIONS=" + json.dumps(v))
"""


# -- the rule ---------------------------------------------------------------------------------


def rule() -> dict[str, str]:
    """What the server, every endpoint and every image must run: the Python minor and the
    shared pins."""
    pins = read_constraints()
    return {"python": python_minor(), **{n: pins[n] for n in MUST_AGREE if n in pins}}


def rule_text() -> str:
    return ", ".join(f"{k} {v}" for k, v in rule().items())


def mismatches(have: Mapping[str, str | None], want: Mapping[str, str] | None = None) -> list[str]:
    """`name have (want X)` for every rule entry `have` gets wrong."""
    want = rule() if want is None else want
    return [
        f"{k} {have.get(k) or 'missing'} (want {v})" for k, v in want.items() if have.get(k) != v
    ]


def local_versions() -> dict[str, str | None]:
    """This process's Python minor and installed versions of the rule's packages."""
    out: dict[str, str | None] = {"python": "%d.%d" % sys.version_info[:2]}
    for name in MUST_AGREE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_server() -> None:
    """The server's side of the rule, before anything is started at a site."""
    bad = mismatches(local_versions())
    if bad:
        raise UserError(
            f"this checkout's Python environment breaks the version rule: {'; '.join(bad)}",
            file=sys.prefix,
            fix=f"run `make setup` with Python {python_minor()} (it installs "
            "requirements/constraints.txt's pins)",
        )


def parse_versions(text: str) -> dict[str, str | None] | None:
    for line in text.splitlines():
        if line.startswith("CROSSFL_VERSIONS="):
            try:
                data = json.loads(line.split("=", 1)[1])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


# -- the inputs of an endpoint environment ------------------------------------------------------


def requirements_path() -> Path:
    return paths.project_root() / "requirements" / "endpoint.txt"


def constraints_path() -> Path:
    return paths.project_root() / "requirements" / "constraints.txt"


def source_text(py: EndpointPython) -> str:
    if py.module:
        use = "".join(f"{u}:" for u in py.module_use)
        return f"module {use}{py.module} ({py.command})"
    if py.standalone:
        return f"standalone {py.standalone.url} sha256:{py.standalone.sha256}"
    return f"path {py.path}"


def inputs_key(py: EndpointPython) -> str:
    """What the venv is made of: the interpreter's source and the requirement files."""
    h = hashlib.sha256(source_text(py).encode())
    for path in (requirements_path(), constraints_path()):
        h.update(path.read_bytes())
    return h.hexdigest()


def _field(site: Site, name: str) -> str:
    return f"deploy.python.{name}"


# -- the step -----------------------------------------------------------------------------------


def venv_exists(remote: Remote, venv: str) -> bool:
    if remote.dry_run:
        return False
    r = remote.run(f"[ -x {quote(venv)}/bin/python ] && echo CROSSFL_VENV=1; true")
    return bool(r.markers().get("VENV"))


def ensure(d: Deployment) -> None:
    """Make (or keep) the site's endpoint venv; record what it holds."""
    site, remote = d.site, d.remote
    py = site.deploy.python
    if py is None:
        return
    venv = site.deploy.venv or f"~/.crossfl/{site.name}/endpoint"
    key = inputs_key(py)
    kept = _unchanged(d, venv, key)
    if kept is not None:
        d.state.endpoint_env = kept
        return
    if venv_exists(remote, venv):  # an endpoint may run from it: stop it before rebuilding
        from crossfl.deploy import gce

        name = site.deploy.endpoint_name
        if gce.runtime(remote, d.info, name).running:
            remote.say(f"the endpoint's environment changes: stopping {name} first")
            gce.stop(remote, name)
    interpreter, version = _interpreter(d, py)
    _make_venv(d, venv, interpreter)
    have = _installed(d, venv)
    bad = mismatches(have)
    if bad and not d.dry_run:
        raise UserError(
            f"site {site.name}: the endpoint venv {venv} on {d.target.label} breaks the "
            f"version rule: {'; '.join(bad)}",
            file=d.target.site_file,
            field="deploy.python",
            fix="check requirements/endpoint.txt and constraints.txt, then deploy again",
        )
    versions = {k: str(v) for k, v in have.items() if v}
    record = EndpointEnvState(
        venv=venv,
        interpreter=interpreter,
        source=source_text(py),
        key=key,
        versions=versions or {"python": version},
        made_at=now(),
    )
    remote.run(
        f"printf '%s\\n' {quote(record.model_dump_json())} > {quote(venv)}/{STAMP}",
        label=f"record the endpoint environment in {venv}/{STAMP}",
    )
    d.state.endpoint_env = record
    d.out.changed.append("endpoint environment")


def _unchanged(d: Deployment, venv: str, key: str) -> EndpointEnvState | None:
    """The recorded environment when the venv's stamp names these inputs and the venv still
    answers with the rule's versions; None otherwise."""
    if d.dry_run:
        d.remote.run(f"cat {quote(venv)}/{STAMP}")
        return None
    r = d.remote.run(f"cat {quote(venv)}/{STAMP} 2>/dev/null; true")
    try:
        stamp = EndpointEnvState.model_validate_json(r.stdout.strip() or "{}")
    except ValueError:
        return None
    if stamp.key != key:
        return None
    have = _installed(d, venv, quiet=True)
    if mismatches(have):
        return None
    d.remote.say(f"endpoint environment unchanged at {venv} ({rule_text()})")
    return stamp


def _interpreter(d: Deployment, py: EndpointPython) -> tuple[str, str]:
    """The interpreter's path on the login node and its version, checked against the rule's
    minor before anything is made from it."""
    site, remote = d.site, d.remote
    if py.module:
        uses = "".join(f"module use {quote(u)} && " for u in py.module_use)
        find = (
            f'{uses}module load {quote(py.module)} 2>"$e" || '
            '{ echo "CROSSFL_BAD=$(tail -1 "$e")"; exit 0; }; '
            f"py=$(command -v {quote(py.command)})"
        )
        what, field = f"module {py.module}", "module"
    elif py.standalone:
        find = _standalone_script(py)
        what, field = f"the standalone CPython {py.standalone.url}", "standalone"
    else:
        find = f"py=$(command -v {quote(py.path or '')})"
        what, field = f"{py.path}", "path"
    script = (
        "e=$(mktemp); trap 'rm -f \"$e\"' EXIT\n"
        f"{find}\n"
        '[ -n "$py" ] || { echo CROSSFL_NOPY=1; exit 0; }\n'
        'echo CROSSFL_PY=$(readlink -f "$py")\n'
        'echo CROSSFL_VERSION=$("$py" -c \'import sys; print("%d.%d.%d" % '
        "sys.version_info[:3])')\n"
    )
    r = remote.run(script, timeout=PIP_TIMEOUT_S, label=f"the endpoint's interpreter: {what}")
    if d.dry_run:
        return "<interpreter>", "?"
    m = r.markers()
    file = d.target.site_file
    if m.get("BAD") or m.get("SHA") or m.get("NOPY") or not m.get("VERSION"):
        if m.get("SHA"):
            detail = f"its sha256 is {m['SHA']}, the site pins {py.standalone.sha256}"  # type: ignore[union-attr]
            fix = "check the URL and sha256 in deploy.python.standalone; nothing was unpacked"
        elif m.get("BAD"):
            detail = f"`module load {py.module}` failed: {m['BAD']}"
            fix = "check the module's name with `module avail` there"
        else:
            detail = f"no interpreter found ({r.tail()})"
            fix = "name an interpreter that exists on the login node"
        raise UserError(
            f"site {site.name}: {what} on {d.target.label}: {detail}",
            file=file,
            field=_field(site, field),
            fix=fix,
        )
    version = m["VERSION"]
    minor = ".".join(version.split(".")[:2])
    want = python_minor()
    if minor != want:
        raise UserError(
            f"site {site.name}: {what} gives Python {version} on {d.target.label}; the version "
            f"rule runs Python {want} on the server, the endpoint and the images",
            file=file,
            field=_field(site, field),
            fix=f"name a Python {want}: deploy.python.standalone (a pinned "
            "python-build-standalone CPython) where the facility's module has another",
        )
    return m["PY"], version


def _standalone_script(py: EndpointPython) -> str:
    """Fetch, verify and unpack a standalone CPython once per sha256 (a verified copy is
    reused); sets $py. A tarball whose sha256 differs is deleted, never unpacked."""
    sa = py.standalone
    assert sa is not None
    dest = f"{PYTHONS}/{sa.sha256[:16]}"
    part = f"{dest}.tar.gz.part"
    return (
        f"d={quote(dest)}; p={quote(part)}\n"
        'if [ ! -x "$d/python/bin/python3" ]; then\n'
        '  mkdir -p "$(dirname "$d")" && rm -f "$p"\n'
        f'  curl -fsSL --retry 3 -o "$p" {quote(sa.url)} 2>"$e" || '
        '{ echo "CROSSFL_BAD=download: $(tail -1 "$e")"; exit 0; }\n'
        "  got=$(sha256sum \"$p\" | cut -d' ' -f1)\n"
        f'  if [ "$got" != {quote(sa.sha256)} ]; then\n'
        '    rm -f "$p"; echo CROSSFL_SHA=$got; exit 0\n'
        "  fi\n"
        '  rm -rf "$d.tmp" && mkdir -p "$d.tmp" && tar -xzf "$p" -C "$d.tmp" && rm -f "$p" '
        '&& mv "$d.tmp" "$d"\n'
        "fi\n"
        'py="$d/python/bin/python3"'
    )


def _make_venv(d: Deployment, venv: str, interpreter: str) -> None:
    site, remote = d.site, d.remote
    inputs = f"{venv}/{INPUTS}"
    res = remote.run(
        f"{quote(interpreter)} -m venv --clear {quote(venv)} && mkdir -p {quote(inputs)}",
        label=f"make the endpoint venv {venv}",
    )
    if not d.dry_run and not res.ok:
        raise UserError(
            f"site {site.name}: `python -m venv {venv}` failed on {d.target.label}: {res.tail()}",
            fix="check the path and its space there, then deploy again",
        )
    for local, name in (
        (requirements_path(), "endpoint.txt"),
        (constraints_path(), "constraints.txt"),
    ):
        if d.dry_run:
            remote.transfer_note(local, f"{inputs}/{name}", local.stat().st_size)
        else:
            remote.write(
                d.info.resolve(f"{inputs}/{name}", site.deploy.remote_root), local.read_bytes()
            )
    pip = (
        f"{quote(venv)}/bin/python -m pip install -q --no-input --disable-pip-version-check "
        f"-c {quote(inputs)}/constraints.txt -r {quote(inputs)}/endpoint.txt"
    )
    res = remote.run(
        pip,
        timeout=PIP_TIMEOUT_S,
        label=f"install the endpoint's pinned packages into {venv} (pip, on {d.target.label})",
    )
    if not d.dry_run and not res.ok:
        raise UserError(
            f"site {site.name}: installing the endpoint's packages into {venv} failed on "
            f"{d.target.label}: {res.tail(2)}",
            fix="check that the login node reaches the package index (a proxy?), then deploy again",
        )


def _installed(d: Deployment, venv: str, quiet: bool = False) -> dict[str, str | None]:
    r = d.remote.run(
        f"{quote(venv)}/bin/python -c {quote(VERSIONS_PY)} 2>&1; true",
        label=None if quiet else f"read the versions installed in {venv}",
    )
    return parse_versions(r.stdout) or {}
