"""`crossfl deploy SITE` as named steps, in order; each one is a function of the `Deployment`
it works on, so it can run (and be tested) on its own:

  layout    make remote_root/{bundle,images,data}
  python    the endpoint's own venv (deploy.python: module, pinned standalone CPython or path)
            with the pinned endpoint packages, checked against the version rule
            (endpoint_env.py); skipped where the site only names deploy.python_activate
  bundle    the rendered site, swapped in whole (skipped when its digest is already there)
  image     the site's image in place: uploaded, pulled by digest or built at the site, as
            container.image_source says; verified, unchanged digests skipped (image.py;
            podman-hpc: podman.py)
  pin       podman-hpc: the bundle rendered again with the image's ID where it changed
  data      site-local data (`--data`)
  functions the kit's functions registered with Globus Compute, once (crossfl.functions);
            their ids recorded here and named in the endpoint's allowed_functions
  endpoint  `globus-compute-endpoint configure`, then our endpoint files where they differ;
            crossfl's keys merged into config.yaml, an admin's kept (coreconfig.py)
  start     start, or restart when the files changed (`--no-start`: only say so)

`deploy_site` (flow.py) saves the state file (`crossfl.state`) after every step, so a failure
leaves it saying exactly what was done and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from crossfl.deploy import endpoint_env, gce, podman
from crossfl.deploy import image as image_step
from crossfl.deploy.deployment import Deployment
from crossfl.deploy.transfer import stage_tree, tree_digest, upload_bundle
from crossfl.endpoints import sdk_client_class
from crossfl.errors import UserError
from crossfl.functions import kit_functions
from crossfl.quoting import quote
from crossfl.render import render_site
from crossfl.state import DataState, FunctionState, now

CONTACT_EMAIL_ENV = "CROSSFL_CONTACT_EMAIL"


def layout(d: Deployment) -> None:
    root = d.info.root
    d.remote.run(
        f"mkdir -p {quote(root)}/bundle {quote(root)}/images {quote(root)}/data",
        label=f"remote layout {root}/{{bundle,images,data}}",
    )


def python(d: Deployment) -> None:
    if d.site.deploy.python is None:
        return
    endpoint_env.ensure(d)
    # the venv exists now: what the login node says once it is activated
    d.info = gce.probe(d.remote, d.site.deploy.remote_root, d.target.site_file or "")
    d.state.endpoint.dir = d.info.endpoint_dir(d.site.deploy.endpoint_name)


def bundle(d: Deployment) -> None:
    if upload_bundle(d.remote, d.bundle, d.digest, d.info.root):
        d.out.changed.append("bundle")
        d.state.bundle_uploaded_at = now()
    d.state.bundle_sha256 = d.digest


def image(d: Deployment) -> None:
    if d.site.container.runtime == "podman-hpc":
        podman.place(d)
    else:
        image_step.place(d)


def pin(d: Deployment) -> None:
    """podman-hpc: the bundle names the image by the ID the image step placed; rendered and
    uploaded again when that ID is not the one it was rendered with. The steps after this one
    see the site so pinned: an MPI site's task functions carry the image's name, and the
    functions registered must be the ones the server submits (with_deployed_image)."""
    if d.site.container.runtime != "podman-hpc" or d.state.image is None or d.dry_run:
        return
    pinned = d.site.with_image(d.state.image.sha256)
    d.site = pinned
    rendered = render_site(pinned)
    digest = tree_digest(rendered)
    if digest == d.digest:
        return
    d.bundle, d.digest = rendered, digest
    d.console.print(f"image pinned by its ID {d.state.image.sha256[:12]}: bundle rendered again")
    bundle(d)


def data(d: Deployment) -> None:
    if d.data is None:
        return
    base = d.site.deploy.data_dir or f"{d.info.root}/data"
    dest = d.info.resolve(base, d.site.deploy.remote_root) + "/" + d.data.name
    changed, digest, size = stage_tree(d.remote, d.data, dest)
    if changed:
        d.out.changed.append("data")
    d.state.data = [x for x in d.state.data if x.remote_path != dest] + [
        DataState(
            local_path=str(d.data.resolve()),
            remote_path=dest,
            sha256=digest,
            size=size,
            uploaded_at=now(),
        )
    ]


def functions(d: Deployment) -> None:
    """Register the kit's functions with Globus Compute (the SDK's Client.register_function),
    each once: one whose digest the state records keeps its id."""
    todo = [
        f
        for kind, f in kit_functions(d.site).items()
        if (rec := d.state.functions.get(kind)) is None or rec.digest != f.digest
    ]
    if not todo:
        return
    if d.dry_run:
        for f in todo:
            d.remote.say(
                f"register the {f.kind} function {f.name} with Globus Compute "
                "(Client.register_function); its id goes into allowed_functions"
            )
        return
    site = d.site.name
    fix = (
        "run deploy where you can log in to Globus (the SDK asks once), or export "
        "GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET here; then deploy again"
    )
    try:
        client = sdk_client_class()()
    except Exception as exc:  # noqa: BLE001 - the SDK's login and network errors: one line
        raise UserError(
            f"site {site}: cannot reach Globus Compute to register the kit's functions "
            f"({type(exc).__name__}: {exc})",
            fix=fix,
        ) from None
    for f in todo:
        d.console.print(f"register the {f.kind} function {f.name} with Globus Compute")
        try:
            function_id = str(client.register_function(f.fn, description=f.description))
        except Exception as exc:  # noqa: BLE001
            raise UserError(
                f"site {site}: registering the {f.kind} function failed "
                f"({type(exc).__name__}: {exc})",
                fix=fix,
            ) from None
        d.state.functions[f.kind] = FunctionState(
            function_id=function_id, name=f.name, digest=f.digest, registered_at=now()
        )
        d.out.changed.append(f"function {f.kind} registered")


def core_keys(d: Deployment, ep: str) -> dict[str, Any]:
    """crossfl's keys of the endpoint's config.yaml: the rendered file's (its local paths
    moved to the endpoint directory), the registered functions, the contact email if given."""
    rendered_dir = str(d.bundle / "endpoint")
    text = (d.bundle / "endpoint" / "config.yaml").read_text().replace(rendered_dir, ep)
    core: dict[str, Any] = yaml.safe_load(text) or {}
    ids = [rec.function_id for rec in d.state.functions.values()]
    listed = [str(x) for x in core.get("allowed_functions") or []]
    core["allowed_functions"] = listed + [i for i in ids if i not in listed]
    core.setdefault("authentication_policy", None)  # the site's, or else an admin's, stands
    core.setdefault("admins", [])
    if d.email:
        core["email"] = d.email
    return core


def endpoint(d: Deployment) -> None:
    name = d.site.deploy.endpoint_name
    multi = d.site.endpoint.mode == "multi-user"
    if gce.configure(d.remote, d.info, name, multi_user=multi, contact_email=d.email):
        d.out.changed.append("endpoint configured")
    ep = d.info.endpoint_dir(name)
    core = core_keys(d, ep)
    ours = d.state.endpoint
    previous = {
        "allowed_functions": ours.allowed_functions,
        "admins": ours.admins,
        "authentication_policy": ours.authentication_policy,
    }
    d.changed_files = gce.install(
        d.remote, d.info, name, f"{d.info.root}/bundle", core=core, previous=previous
    )
    ours.allowed_functions = list(core["allowed_functions"])
    ours.admins = list(core["admins"])
    ours.authentication_policy = core["authentication_policy"]
    if d.changed_files:
        d.out.changed.append("endpoint files: " + ", ".join(d.changed_files))
    d.state.endpoint.configured = True
    d.state.endpoint.installed_bundle_sha256 = d.digest
    d.runtime = gce.runtime(d.remote, d.info, name)
    d.state.endpoint.endpoint_id = d.runtime.endpoint_id
    d.state.endpoint.started = d.runtime.running and d.runtime.endpoint_id is not None


def start(d: Deployment) -> None:
    name, site, rt = d.site.deploy.endpoint_name, d.site, d.runtime
    if rt is None:
        rt = d.runtime = gce.runtime(d.remote, d.info, name)
    if not d.start:
        if rt.running and d.changed_files:
            d.console.print(
                f"[yellow]endpoint {name} is running with the previous files; "
                f"`crossfl deploy {site.name}` (without --no-start) restarts it[/]"
            )
        return
    if rt.running and d.changed_files:
        d.console.print(f"endpoint files changed: restarting {name}")
        gce.stop(d.remote, name)
        rt = gce.Runtime(False, None, rt.endpoint_id, True)
    if rt.running and not d.dry_run:
        return
    d.state.endpoint.started = False
    d.record()
    multi = site.endpoint.mode == "multi-user"
    if not d.dry_run and d.info.uid == 0 and not multi and not d.email:
        raise UserError(
            f"site {site.name}: you log in to {d.target.label} as root, and Globus Compute "
            f"treats an endpoint started by root as multi-user, which needs a contact "
            f"email; done so far: bundle uploaded, endpoint {name} configured",
            fix="deploy as your own user (deploy.user), or pass --contact-email ADDR "
            f"(or ${CONTACT_EMAIL_ENV})",
        )
    # nothing of it runs now: it starts on the login node this connection reached, and that
    # node is recorded for every later status, stop and deploy (login hosts are load-balanced)
    d.remote.pin_to(None)
    try:
        gce.start(d.remote, name)
    except gce.StartFailed as exc:
        raise _start_error(d, exc) from None
    d.state.endpoint.login_host = gce.login_host(d.remote)
    d.remote.pin_to(d.state.endpoint.login_host, d.site.deploy.login_hop)
    rt = d.runtime = gce.runtime(d.remote, d.info, name)
    if not d.dry_run and not rt.endpoint_id:
        raise UserError(
            f"site {site.name}: `globus-compute-endpoint start` returned but "
            f"{name} has no endpoint.json",
            fix=f"run `crossfl logs {site.name}` to see why",
        )
    d.out.changed.append("endpoint started")
    d.state.endpoint.endpoint_id = rt.endpoint_id
    d.state.endpoint.started = rt.endpoint_id is not None
    d.state.endpoint.started_at = now()


Step = Callable[[Deployment], None]
STEPS: tuple[tuple[str, Step], ...] = (
    ("layout", layout),
    ("python", python),
    ("bundle", bundle),
    ("image", image),
    ("pin", pin),
    ("data", data),
    ("functions", functions),
    ("endpoint", endpoint),
    ("start", start),
)


def _start_error(d: Deployment, exc: gce.StartFailed) -> UserError:
    site, t, info, state = d.site, d.target, d.info, d.state
    ep = site.deploy.endpoint_name
    done = "bundle in place" + (", image staged" if state.image else "")
    done += f", endpoint {ep} configured in {info.endpoint_dir(ep)}; not started"
    eid = state.endpoint.endpoint_id
    done += f" (registered earlier as {eid})" if eid else ", no endpoint id"
    fixes = {
        "network": f"check that {t.host} reaches the Globus service over HTTPS (proxy?), "
        f"then run `crossfl deploy {site.name}` again",
        "login": f"log in once there: `ssh -t {t.host} globus-compute-endpoint login`, or "
        "keep GLOBUS_COMPUTE_CLIENT_ID/SECRET exports in a file only you can read there "
        "(chmod 600) that deploy.python_activate sources; then deploy again",
        "email": "deploy as your own user (deploy.user), or pass --contact-email ADDR",
        "running": f"run `crossfl stop {site.name}` then deploy again",
        "other": f"run `crossfl logs {site.name}` for the endpoint's log, then deploy again",
    }
    return UserError(
        f"site {site.name}: `globus-compute-endpoint start {ep}` on {t.label} "
        f"failed: {exc.detail}; done: {done}",
        fix=fixes[exc.kind],
    )
