"""`crossfl deploy/status/logs/stop SITE`.

deploy: render -> connect -> probe the login node -> the steps of steps.py in order (layout,
bundle, image, data, endpoint, start), the state file (`crossfl.state`) saved after each,
so a failure leaves it saying exactly what was done and nothing more.

`--dry-run` needs no SSH and no image: it prints every remote command and transfer of the
whole plan in order, with the login node's answers as placeholders ($HOME for the remote
home, `<job id>` for a submitted build job), and changes nothing there or in the state file.
Only an `upload` image source needs the image built here (make image ARCH=...).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from crossfl import paths
from crossfl.deploy import endpoint_env, gce, podman
from crossfl.deploy.deployment import BUILD_WAIT_S, Deployment, DeployOutcome
from crossfl.deploy.remote import Remote, Target
from crossfl.deploy.steps import CONTACT_EMAIL_ENV, STEPS
from crossfl.deploy.transfer import tree_digest
from crossfl.errors import UserError
from crossfl.images import sif_path
from crossfl.render import render_site
from crossfl.sites import Site, load_site, with_deployed_image
from crossfl.state import DeployState, EndpointState, load_state, save_state


def site_file(site: Site) -> str:
    return str(paths.sites_dir() / f"{site.name}.yaml")


def target_of(site: Site) -> Target:
    d = site.deploy
    if not d.host:
        raise UserError(
            f"site {site.name} has no deploy block (deploy.host is not set), so it "
            f"cannot be deployed over SSH",
            file=site_file(site),
            field="deploy.host",
            fix="add `deploy: {host: <login host or ~/.ssh/config alias>}` to the "
            "site file or its overrides; local sites run with `crossfl run`",
        )
    return Target(
        site=site.name,
        host=d.host,
        user=d.user,
        port=d.port,
        activate=d.python_activate,
        site_file=site_file(site),
    )


def local_image(site: Site) -> Path | None:
    """The image this site uploads, as built here: build/images/crossfl-<arch>.sif (None
    where the site builds or pulls its image, or runs none)."""
    if site.image() is None or site.container.image_source.method != "upload":
        return None
    return sif_path(site.arch)


def _new_state(site: Site, t: Target, info: gce.LoginInfo) -> DeployState:
    return DeployState(
        site=site.name,
        host=t.host,
        user=t.user,
        port=t.port,
        remote_root=info.root,
        endpoint=EndpointState(
            name=site.deploy.endpoint_name, dir=info.endpoint_dir(site.deploy.endpoint_name)
        ),
    )


def pin_login_node(remote: Remote, site: Site, state: DeployState | None) -> None:
    """Process commands (is it running, stop, start) go to the login node the endpoint was
    started on, as deploy recorded it."""
    if state is not None and state.endpoint.login_host:
        remote.pin_to(state.endpoint.login_host, site.deploy.login_hop)


@contextmanager
def deployment(
    name: str,
    *,
    data: Path | None = None,
    start: bool = True,
    dry_run: bool = False,
    contact_email: str | None = None,
    console: Console | None = None,
    build_wait_s: float = BUILD_WAIT_S,
) -> Iterator[Deployment]:
    """Check the inputs, render the site, connect and probe the login node, and load the
    recorded state: what the steps work on. Nothing is changed at the site yet."""
    console = console or Console(stderr=True, soft_wrap=True)
    site = load_site(name)
    if not dry_run:  # e.g. Frontier's project directory: a ${VAR:?} the site left unset
        site.require_set("deploy")
    t = target_of(site)
    email = contact_email or os.environ.get(CONTACT_EMAIL_ENV) or None
    if data is not None and not data.exists():
        raise UserError(
            f"no such file or directory: {data}",
            field="--data",
            fix="give the path of the site-local data to upload",
        )
    endpoint_env.check_server()  # the version rule, this side, before anything starts there
    src = site.container.image_source
    podman.refuse_upload(site.name, site.container.runtime, src.method)
    image = local_image(site)
    if image is not None and not image.is_file():
        raise UserError(
            f"site {site.name} uploads the image {image.name}, which is not built here",
            file=image,
            fix=f"build it first (`make image ARCH={site.arch}`), or set "
            "container.image_source.method: build or pull in "
            f"deploy/sites/overrides/{site.name}.yaml",
        )
    # podman-hpc: the endpoint and the ranks name the image deploy placed by its ID
    bundle = render_site(site if dry_run else with_deployed_image(site))
    digest = tree_digest(bundle)
    console.print(f"rendered {bundle} (bundle {digest[:12]})", highlight=False)
    with Remote(t, dry_run=dry_run, console=console) as r:
        # a venv deploy makes (deploy.python) cannot be activated before it exists
        venv = site.deploy.venv if site.deploy.python is not None else None
        ready = venv is None or endpoint_env.venv_exists(r, venv)
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "", activate=ready)
        prev = None if dry_run else load_state(site.name)
        pin_login_node(r, site, prev)
        state = _new_state(site, t, info)
        if prev is not None and prev.host == t.host and prev.remote_root == info.root:
            state = prev.model_copy(deep=True)
            state.endpoint.dir = info.endpoint_dir(site.deploy.endpoint_name)
        yield Deployment(
            site=site,
            target=t,
            remote=r,
            info=info,
            state=state,
            bundle=bundle,
            digest=digest,
            image=image,
            data=data,
            start=start,
            email=email,
            console=console,
            build_wait_s=build_wait_s,
        )


def deploy_site(
    name: str,
    *,
    data: Path | None = None,
    start: bool = True,
    dry_run: bool = False,
    contact_email: str | None = None,
    console: Console | None = None,
    build_wait_s: float = BUILD_WAIT_S,
) -> DeployOutcome:
    console = console or Console(stderr=True, soft_wrap=True)
    with deployment(
        name,
        data=data,
        start=start,
        dry_run=dry_run,
        contact_email=contact_email,
        console=console,
        build_wait_s=build_wait_s,
    ) as d:
        try:
            for _name, step in STEPS:
                step(d)
                d.record()
            d.out.endpoint_id = d.state.endpoint.endpoint_id
            d.record("ok" if d.out.changed else "unchanged")
        except UserError as exc:
            d.record("failed", exc.render())
            raise
    out, site = d.out, d.site
    if dry_run:
        console.print("dry run: nothing was transferred or run")
    elif out.changed:
        eid = f", endpoint {out.endpoint_id}" if out.endpoint_id else ""
        console.print(f"site {site.name} deployed: {'; '.join(out.changed)}{eid}")
    else:
        running = (
            f"endpoint {out.endpoint_id} running"
            if d.state.endpoint.started
            else f"endpoint {site.deploy.endpoint_name} configured, not started"
        )
        console.print(f"site {site.name}: nothing changed ({running}, bundle {d.digest[:12]})")
    return out


# -- status / logs / stop -----------------------------------------------------------------------


def site_status(
    name: str, *, dry_run: bool = False, console: Console | None = None
) -> dict[str, str]:
    """What the state file records, then what the login node says (endpoint, pilot jobs)."""
    console = console or Console(soft_wrap=True)
    site = load_site(name)
    t = target_of(site)
    state = load_state(site.name)
    rows: dict[str, str] = {"site": site.name, "host": t.label}
    if state is not None:
        rows["phase (recorded)"] = state.phase
        rows["last deploy"] = f"{state.last_deploy} ({state.last_result})"
        if state.last_error:
            rows["last error"] = state.last_error
        rows["bundle"] = (state.bundle_sha256 or "-")[:12]
        rows["image"] = (
            f"{state.image.remote_path} sha256:{state.image.sha256[:12]} ({state.image.source})"
            if state.image
            else "-"
        )
        rows["functions"] = (
            ", ".join(f"{k} {f.function_id}" for k, f in state.functions.items()) or "-"
        )
        if state.image_build:
            rows["image build"] = (
                f"{state.image_build.where} job {state.image_build.job_id} "
                f"not verified yet; output: {state.image_build.output}"
            )
    else:
        rows["phase (recorded)"] = "never deployed"
        rows["next"] = f"crossfl deploy {site.name}"
        if not dry_run:
            rows["login node"] = "not asked: nothing was deployed there"
    _print_rows(console, rows)
    live: dict[str, str] = {}
    if state is None and not dry_run:
        return rows
    with Remote(t, dry_run=dry_run, console=Console(stderr=True, soft_wrap=True)) as r:
        pin_login_node(r, site, state)
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "", version=True)
        rt = gce.runtime(r, info, site.deploy.endpoint_name)
        live["endpoint"] = site.deploy.endpoint_name
        if state is not None and state.endpoint.login_host:
            live["login node"] = f"{state.endpoint.login_host} (recorded at start)"
        live["endpoint id"] = rt.endpoint_id or "-"
        live["endpoint process"] = (
            f"running (pid {rt.pid})"
            if rt.running
            else "not running" + ("" if rt.configured else ", not configured")
        )
        live["globus-compute-endpoint"] = info.gce_version
        jobs = gce.queue(r, site.sched.query)
        if jobs is not None:
            live["pilot jobs"] = jobs.stdout.strip() or "none"
            if jobs.stdout.strip() and site.sched.cancel:
                live["cancel a pilot job"] = f"{site.sched.cancel} JOBID (on {t.label})"
    if not dry_run:
        _print_rows(console, live)
    return {**rows, **live}


KEY_WIDTH = 24


def _print_rows(console: Console, rows: dict[str, str], width: int = 80) -> None:
    """One ``key value`` line per row, the keys right-aligned; a value too long for the line
    goes below its key, wrapped between words only (a path stays whole and copyable), and a
    multi-line value (a scheduler's answer) below its key as it is. The console must not wrap
    (``soft_wrap``)."""
    for k, v in rows.items():
        if KEY_WIDTH + 1 + len(v) <= width and "\n" not in v:
            console.print(f"[bold]{k:>{KEY_WIDTH}}[/] {escape(v)}", highlight=False)
            continue
        console.print(f"[bold]{k:>{KEY_WIDTH}}[/]", highlight=False)
        lines = (
            v.splitlines()
            if "\n" in v
            else textwrap.wrap(v, width - 2, break_long_words=False, break_on_hyphens=False)
        )
        for line in lines:
            console.print(f"  {escape(line)}", highlight=False)


def site_logs(
    name: str, *, lines: int = 50, dry_run: bool = False, console: Console | None = None
) -> str:
    console = console or Console(soft_wrap=True)
    site = load_site(name)
    t = target_of(site)
    with Remote(t, dry_run=dry_run, console=Console(stderr=True, soft_wrap=True)) as r:
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "")
        res = gce.logs(r, info, site.deploy.endpoint_name, lines)
    if not dry_run and not res.ok:
        raise UserError(
            f"site {site.name}: no endpoint log on {t.label} ({res.tail()})",
            fix=f"deploy first: `crossfl deploy {site.name}`",
        )
    console.print(res.stdout, end="", highlight=False, markup=False)
    return res.stdout


def stop_site(name: str, *, dry_run: bool = False, console: Console | None = None) -> bool:
    console = console or Console(stderr=True, soft_wrap=True)
    site = load_site(name)
    t = target_of(site)
    ep = site.deploy.endpoint_name
    state = load_state(site.name)
    with Remote(t, dry_run=dry_run, console=console) as r:
        pin_login_node(r, site, state)
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "")
        rt = gce.runtime(r, info, ep)
        if not rt.running and not dry_run:
            console.print(f"site {site.name}: endpoint {ep} is not running; nothing to stop")
            stopped = False
        else:
            res = gce.stop(r, ep)
            if not dry_run and not res.ok:
                raise UserError(
                    f"site {site.name}: `globus-compute-endpoint stop {ep}` failed "
                    f"on {t.label}: {res.tail()}",
                    fix=f"see `crossfl logs {site.name}`",
                )
            stopped = True
    if state is not None and not dry_run:
        state.endpoint.started = False
        state.endpoint.login_host = None
        save_state(state)
    if stopped and not dry_run:
        console.print(f"site {site.name}: endpoint {ep} stopped")
    return stopped
