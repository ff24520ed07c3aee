"""`crossfl deploy/status/logs/stop SITE`: the steps, in order, each recorded as it succeeds.

deploy: render -> connect -> probe the login node -> layout -> bundle -> image -> data ->
configure -> install endpoint files -> start (or restart if the files changed) -> endpoint id.
The state file (`crossfl.state`) is saved after each step, so a failure leaves it saying
exactly what was done and nothing more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from crossfl import paths
from crossfl.deploy import gce
from crossfl.deploy.remote import Remote, Target, q
from crossfl.deploy.transfer import stage_file, stage_tree, tree_digest, upload_bundle
from crossfl.errors import UserError
from crossfl.images import sif_path
from crossfl.render import render_site
from crossfl.sites import Site, load_site
from crossfl.state import (DataState, DeployState, EndpointState, ImageState, load_state, now,
                           save_state)

CONTACT_EMAIL_ENV = "CROSSFL_CONTACT_EMAIL"


@dataclass
class Outcome:
    site: str
    changed: list[str] = field(default_factory=list)
    endpoint_id: str | None = None
    state_file: Path | None = None


def site_file(site: Site) -> str:
    return str(paths.sites_dir() / f"{site.name}.yaml")


def target_of(site: Site) -> Target:
    d = site.deploy
    if not d.host:
        raise UserError(f"site {site.name} has no deploy block (deploy.host is not set), so it "
                        f"cannot be deployed over SSH", file=site_file(site), field="deploy.host",
                        fix="add `deploy: {host: <login host or ~/.ssh/config alias>}` to the "
                            "site file or its overrides; local sites run with `crossfl run`")
    return Target(site=site.name, host=d.host, user=d.user, port=d.port,
                  activate=d.python_activate, site_file=site_file(site))


def local_image(site: Site) -> Path | None:
    """The image this site runs, as built here: build/images/crossfl-<arch>.sif."""
    if site.image() is None:
        return None
    return sif_path(site.arch)


def _resolve_remote(path: str, info: gce.LoginInfo, raw_root: str) -> str:
    """A site path with $HOME/~ or the unresolved remote_root replaced by login-node values."""
    root_expr = raw_root.replace("~/", "$HOME/", 1)
    if path.startswith(root_expr):
        path = info.root + path[len(root_expr):]
    if path.startswith("~/"):
        path = "$HOME/" + path[2:]
    return path.replace("$HOME", info.home).replace("${HOME}", info.home)


def _new_state(site: Site, t: Target, info: gce.LoginInfo) -> DeployState:
    return DeployState(site=site.name, host=t.host, user=t.user, port=t.port,
                       remote_root=info.root,
                       endpoint=EndpointState(name=site.deploy.endpoint_name,
                                              dir=info.endpoint_dir(site.deploy.endpoint_name)))


def deploy_site(name: str, *, data: Path | None = None, start: bool = True,
                dry_run: bool = False, contact_email: str | None = None,
                console: Console | None = None) -> Outcome:
    console = console or Console(stderr=True, soft_wrap=True)
    site = load_site(name)
    t = target_of(site)
    email = contact_email or os.environ.get(CONTACT_EMAIL_ENV) or None
    if data is not None and not data.exists():
        raise UserError(f"no such file or directory: {data}", field="--data",
                        fix="give the path of the site-local data to upload")
    image = local_image(site)
    if image is not None and not image.is_file():
        raise UserError(f"site {site.name} runs the image {image.name}, which is not built here",
                        file=image, fix=f"build it first (`make image ARCH={site.arch}`), "
                                        "or set container.runtime: none")
    bundle = render_site(site)
    digest = tree_digest(bundle)
    console.print(f"rendered {bundle} (bundle {digest[:12]})", highlight=False)
    out = Outcome(site.name)

    with Remote(t, dry_run=dry_run, console=console) as r:
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "")
        prev = None if dry_run else load_state(site.name)
        state = _new_state(site, t, info)
        if prev is not None and prev.host == t.host and prev.remote_root == info.root:
            state = prev.model_copy(deep=True)
            state.endpoint.dir = info.endpoint_dir(site.deploy.endpoint_name)

        def record(result: str | None = None, error: str | None = None) -> None:
            if dry_run:
                return
            state.last_deploy = now()
            if result:
                state.last_result = result  # type: ignore[assignment]
            state.last_error = error
            out.state_file = save_state(state)

        try:
            root = info.root
            r.run(f"mkdir -p {q(root)}/bundle {q(root)}/images {q(root)}/data",
                  label=f"remote layout {root}/{{bundle,images,data}}")
            if upload_bundle(r, bundle, digest, root):
                out.changed.append("bundle")
                state.bundle_uploaded_at = now()
            state.bundle_sha256 = digest
            record()

            if image is not None:
                dest = _resolve_remote(site.image() or "", info, site.deploy.remote_root)
                r.run(f"mkdir -p {q(dest.rsplit('/', 1)[0])}")
                known = _known_sha(state.image, image)
                staged = stage_file(r, image, dest, sha256=known, what="image")
                if staged.changed:
                    out.changed.append("image")
                state.image = ImageState(arch=site.arch, local_path=str(image),
                                         remote_path=staged.remote_path, sha256=staged.sha256,
                                         size=staged.size, staged_at=now(),
                                         local_mtime_ns=image.stat().st_mtime_ns)
                record()

            if data is not None:
                base = site.deploy.data_dir or f"{root}/data"
                dest = _resolve_remote(base, info, site.deploy.remote_root) + "/" + data.name
                changed, ddigest, size = stage_tree(r, data, dest)
                if changed:
                    out.changed.append("data")
                state.data = [d for d in state.data if d.remote_path != dest] + [
                    DataState(local_path=str(data.resolve()), remote_path=dest, sha256=ddigest,
                              size=size, uploaded_at=now())]
                record()

            ep_name = site.deploy.endpoint_name
            multi = site.endpoint.mode == "multi-user"
            if gce.configure(r, info, ep_name, multi_user=multi, contact_email=email):
                out.changed.append("endpoint configured")
            extra = f"email: {email}" if email else ""
            files = gce.install(r, info, ep_name, f"{root}/bundle", extra_core=extra,
                                rendered_dir=str(bundle / "endpoint"))
            if files:
                out.changed.append("endpoint files: " + ", ".join(files))
            state.endpoint.configured = True
            state.endpoint.installed_bundle_sha256 = digest
            rt = gce.runtime(r, info, ep_name)
            state.endpoint.endpoint_id = rt.endpoint_id
            state.endpoint.started = rt.running and rt.endpoint_id is not None
            record()

            if not start and rt.running and files:
                console.print(f"[yellow]endpoint {ep_name} is running with the previous files; "
                              f"`crossfl deploy {site.name}` (without --no-start) restarts it[/]")
            if start:
                if rt.running and files:
                    console.print(f"endpoint files changed: restarting {ep_name}")
                    gce.stop(r, ep_name)
                    rt = gce.Runtime(False, None, rt.endpoint_id, True)
                if not rt.running or dry_run:
                    state.endpoint.started = False
                    record()
                    if not dry_run and info.uid == 0 and not multi and not email:
                        raise UserError(
                            f"site {site.name}: you log in to {t.label} as root, and Globus Compute "
                            f"treats an endpoint started by root as multi-user, which needs a contact "
                            f"email; done so far: bundle uploaded, endpoint {ep_name} configured",
                            fix="deploy as your own user (deploy.user), or pass --contact-email ADDR "
                                f"(or ${CONTACT_EMAIL_ENV})")
                    try:
                        gce.start(r, ep_name)
                    except gce.StartFailed as exc:
                        raise _start_error(site, t, exc, ep_name, info, state) from None
                    rt = gce.runtime(r, info, ep_name)
                    if not dry_run and not rt.endpoint_id:
                        raise UserError(f"site {site.name}: `globus-compute-endpoint start` "
                                        f"returned but {ep_name} has no endpoint.json",
                                        fix=f"run `crossfl logs {site.name}` to see why")
                    out.changed.append("endpoint started")
                    state.endpoint.endpoint_id = rt.endpoint_id
                    state.endpoint.started = rt.endpoint_id is not None
                    state.endpoint.started_at = now()
            out.endpoint_id = state.endpoint.endpoint_id
            record("ok" if out.changed else "unchanged")
        except UserError as exc:
            record("failed", exc.render())
            raise

    if dry_run:
        console.print("dry run: nothing was transferred or run")
    elif out.changed:
        eid = f", endpoint {out.endpoint_id}" if out.endpoint_id else ""
        console.print(f"site {site.name} deployed: {'; '.join(out.changed)}{eid}")
    else:
        running = (f"endpoint {out.endpoint_id} running" if state.endpoint.started
                   else f"endpoint {site.deploy.endpoint_name} configured, not started")
        console.print(f"site {site.name}: nothing changed ({running}, bundle {digest[:12]})")
    return out


def _known_sha(prev: ImageState | None, image: Path) -> str | None:
    """The recorded sha256 of the local image if the file is the one staged last time."""
    st = image.stat()
    if prev and prev.local_path == str(image) and prev.size == st.st_size \
            and prev.local_mtime_ns == st.st_mtime_ns:
        return prev.sha256
    return None


def _start_error(site: Site, t: Target, exc: gce.StartFailed, ep: str, info: gce.LoginInfo,
                 state: DeployState) -> UserError:
    done = "bundle in place" + (", image staged" if state.image else "")
    done += f", endpoint {ep} configured in {info.endpoint_dir(ep)}; not started"
    eid = state.endpoint.endpoint_id
    done += f" (registered earlier as {eid})" if eid else ", no endpoint id"
    fixes = {
        "network": f"check that {t.host} reaches the Globus service over HTTPS (proxy?), "
                   f"then run `crossfl deploy {site.name}` again",
        "login": f"log in once there: `ssh -t {t.host} globus-compute-endpoint login` (or "
                 "export GLOBUS_COMPUTE_CLIENT_ID/SECRET in deploy.python_activate), then deploy again",
        "email": "deploy as your own user (deploy.user), or pass --contact-email ADDR",
        "running": f"run `crossfl stop {site.name}` then deploy again",
        "other": f"run `crossfl logs {site.name}` for the endpoint's log, then deploy again",
    }
    return UserError(f"site {site.name}: `globus-compute-endpoint start {ep}` on {t.label} "
                     f"failed: {exc.detail}; done: {done}", fix=fixes[exc.kind])


# -- status / logs / stop -----------------------------------------------------------------------

def site_status(name: str, *, dry_run: bool = False, console: Console | None = None) -> dict[str, str]:
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
        rows["image"] = (f"{state.image.remote_path} sha256:{state.image.sha256[:12]}"
                         if state.image else "-")
    else:
        rows["phase (recorded)"] = "never deployed"
    _print_rows(console, rows)
    live: dict[str, str] = {}
    with Remote(t, dry_run=dry_run, console=Console(stderr=True, soft_wrap=True)) as r:
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "", version=True)
        rt = gce.runtime(r, info, site.deploy.endpoint_name)
        live["endpoint"] = site.deploy.endpoint_name
        live["endpoint id"] = rt.endpoint_id or "-"
        live["endpoint process"] = (f"running (pid {rt.pid})" if rt.running else
                                    "not running" + ("" if rt.configured else ", not configured"))
        live["globus-compute-endpoint"] = info.gce_version
        jobs = gce.queue(r, site.sched.query)
        if jobs is not None:
            live["pilot jobs"] = jobs.stdout.strip() or "none"
            if jobs.stdout.strip() and site.sched.cancel:
                live["cancel a pilot job"] = f"{site.sched.cancel} JOBID (on {t.label})"
    if not dry_run:
        _print_rows(console, live)
    return {**rows, **live}


def _print_rows(console: Console, rows: dict[str, str]) -> None:
    for k, v in rows.items():
        console.print(f"[bold]{k:>24}[/] {v}", highlight=False)


def site_logs(name: str, *, lines: int = 50, dry_run: bool = False,
              console: Console | None = None) -> str:
    console = console or Console(soft_wrap=True)
    site = load_site(name)
    t = target_of(site)
    with Remote(t, dry_run=dry_run, console=Console(stderr=True, soft_wrap=True)) as r:
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "")
        res = gce.logs(r, info, site.deploy.endpoint_name, lines)
    if not dry_run and not res.ok:
        raise UserError(f"site {site.name}: no endpoint log on {t.label} ({res.tail()})",
                        fix=f"deploy first: `crossfl deploy {site.name}`")
    console.print(res.stdout, end="", highlight=False, markup=False)
    return res.stdout


def stop_site(name: str, *, dry_run: bool = False, console: Console | None = None) -> bool:
    console = console or Console(stderr=True, soft_wrap=True)
    site = load_site(name)
    t = target_of(site)
    ep = site.deploy.endpoint_name
    with Remote(t, dry_run=dry_run, console=console) as r:
        info = gce.probe(r, site.deploy.remote_root, t.site_file or "")
        rt = gce.runtime(r, info, ep)
        if not rt.running and not dry_run:
            console.print(f"site {site.name}: endpoint {ep} is not running; nothing to stop")
            stopped = False
        else:
            res = gce.stop(r, ep)
            if not dry_run and not res.ok:
                raise UserError(f"site {site.name}: `globus-compute-endpoint stop {ep}` failed "
                                f"on {t.label}: {res.tail()}",
                                fix=f"see `crossfl logs {site.name}`")
            stopped = True
    state = load_state(site.name)
    if state is not None and not dry_run:
        state.endpoint.started = False
        save_state(state)
    if stopped and not dry_run:
        console.print(f"site {site.name}: endpoint {ep} stopped")
    return stopped
