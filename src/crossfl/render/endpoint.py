"""What the endpoint templates place (site_templates/endpoint/): the core config, and the
user config template with the GlobusComputeEngine, the site's Parsl provider and launcher
(their fields from crossfl.schedulers), the worker setup and the container."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crossfl import paths
from crossfl.errors import UserError
from crossfl.functions import allowed_serializers
from crossfl.render.options import jinja_literal, user_variables, var_expr
from crossfl.render.shell import container_options, engine_container, host_env, setup_lines
from crossfl.schedulers.launchers import LAUNCHERS
from crossfl.sites import Site, binding, job_spec


def check_passthrough(site: Site, values: list[str], what: str) -> None:
    for v in values:
        if "{{" in v or "{%" in v or "{#" in v:
            raise UserError(
                f"{what} contains Jinja markup {v!r}, which the endpoint would evaluate",
                file=paths.sites_dir() / f"{site.name}.yaml",
                field=what,
                fix="remove the braces (use ${VAR} for environment values)",
            )


def check_container_mounts(site: Site) -> None:
    """No mount of the site's (its binds, APPTAINER_BIND, Apptainer's defaults) may hide what
    the workers need from the image (crossfl.images.layout.image_paths)."""
    from crossfl.images.arches import ARCHES_FILE, get_arch
    from crossfl.images.layout import PREFIX, image_paths
    from crossfl.images.mounts import apptainer_mounts, hides_image_path

    if site.container.runtime != "apptainer":
        return
    mounts = apptainer_mounts(
        container_options(site), home="/home/user", env={**host_env(site), **site.container.env}
    )
    known = (paths.containers_dir() / ARCHES_FILE).is_file()  # a bare catalog has no arch table
    for path in image_paths(get_arch(site.arch)) if known else [PREFIX]:
        mount = hides_image_path(path, mounts)
        if mount is not None:
            raise UserError(
                f"{mount.why} {mount.src} (mounted at {mount.dst}) hides the image's "
                f"{path}: the workers' venv, Python or globus-compute-endpoint "
                "vanish inside the container",
                file=paths.sites_dir() / f"{site.name}.yaml",
                field="container.binds",
                fix="bind only the directories the job needs (e.g. /opt/cray/pe/pals, not /opt)",
            )


def endpoint_context(site: Site, endpoint_dir: Path) -> dict[str, Any]:
    sched = site.sched
    props = user_variables(site)
    var = {k: var_expr(k, p) for k, p in props.items()}
    mpi = site.endpoint.tasks == "mpi"
    facility_init = setup_lines(site, batch=False) + [site.fill(x) for x in site.worker_init]
    if mpi and site.deploy.python_activate:
        # The MPI engine's worker runs on the host (only its ranks run the image): the
        # login node's Python, with the endpoint's own Parsl.
        facility_init.append(site.deploy.python_activate)
    check_passthrough(site, facility_init, "worker_init")
    # One YAML double-quoted scalar: the facility's lines, then the user's worker_init. The
    # endpoint inserts the user string JSON-quoted; its escapes are valid YAML escapes, so the
    # inner text is spliced in without a way to break out of the quotes.
    init_head = json.dumps("".join(line + "\n" for line in facility_init))[1:-1]
    worker_init_expr = '"%s{{ (worker_init | default(%s))[1:-1] }}"' % (
        init_head,
        jinja_literal(props["worker_init"]["default"]),
    )
    acc = site.accelerator
    part = site.node_part()  # part of a shared node: the scheduler's GPU binding stands
    mwpn: Any
    if "max_workers_per_node" in var:  # a user option where there are no pilot jobs
        mwpn = var["max_workers_per_node"]
    else:
        mwpn = site.workers_per_node()
    spec = job_spec(site)
    pilot = [f"{sched.directive_prefix} {d}" for d in sched.directives(spec, for_pilot=True)]
    check_passthrough(site, pilot, "directives")
    check_container_mounts(site)
    launcher = LAUNCHERS[site.launcher.type]
    local = site.deploy.host is None  # an endpoint run from this checkout
    container_type, container_cmd = (None, "") if mpi else engine_container(site)
    per_device = site.endpoint.tasks == "per-device"
    return {
        "site": site.name,
        "docs": site.docs,
        "display_name": site.endpoint.display_name or f"crossfl {site.name}",
        "allowed_functions": site.endpoint.allowed_functions,
        "multi_user": site.endpoint.mode == "multi-user",
        "endpoint_name": site.deploy.endpoint_name,
        "template_path": str(endpoint_dir / "user_config_template.yaml.j2") if local else None,
        "schema_path": str(endpoint_dir / "user_config_schema.json") if local else None,
        "worker_init_expr": worker_init_expr,
        "tasks": site.endpoint.tasks,
        "mpi": mpi,
        # GlobusMPIEngine: Parsl's MPI mode launches each task's ranks with this
        "mpi_launcher": site.launcher.type if mpi else None,
        "max_workers_per_node": mwpn,
        # per-device: worker i pinned to device i; otherwise one worker holds the node
        "accelerators": acc.device_ids
        if acc.devices_per_node and part is None and per_device
        else [],
        "cpu_affinity": site.endpoint.cpu_affinity if part is None and per_device else "none",
        "encrypted": site.endpoint.encrypted,
        "allowed_serializers": allowed_serializers(site),
        "authentication_policy": site.endpoint.authentication_policy,
        "admins": site.endpoint.admins,
        "address": site.endpoint.address,
        "address_interface": site.endpoint.address_interface,
        "idle_soft": var["idle_heartbeats_soft"],
        "max_idletime": var["max_idletime"],
        "idle_hard": site.endpoint.idle_heartbeats_hard,
        "provider": sched.provider,
        "provider_fields": sched.provider_fields(spec, var),
        "scheduler_options": pilot,
        # MPI mode: "The Provider _must_ use the SimpleLauncher" (Parsl's MPIExecutor): the
        # worker starts on the pilot's first node and launches ranks itself
        "launcher": "SimpleLauncher" if mpi else launcher.parsl_class,
        "launcher_fields": [] if mpi else launcher.fields(binding(site)),
        "container": container_type is not None,
        "container_type": container_type,
        "container_uri": site.image(),
        "container_cmd_options": container_cmd,
        "user_env": site.endpoint.environment,
    }


def identity_mapping(site: Site) -> list[dict[str, Any]]:
    """A Globus Connect-style expression mapping: user@DOMAIN -> local account `user`."""
    domain = (site.endpoint.identity_domain or "").replace(".", r"\.")
    return [
        {
            "comment": f"crossfl {site.name}: Globus identities of "
            f"{site.endpoint.identity_domain} to local accounts of the same name",
            "DATA_TYPE": "expression_identity_mapping#1.0.0",
            "mappings": [{"source": "{username}", "match": f"(.*)@{domain}", "output": "{0}"}],
        }
    ]
