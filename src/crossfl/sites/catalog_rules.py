"""Catalog rules: what a site file must hold together, checked when it loads
(crossfl.sites.loading), each broken rule one FieldError under its field: what the site's
scheduler and launcher can do (asked of crossfl.schedulers by their stated capabilities, never
by name), the facility's account rule, the published queue/partition/QOS limits (the site's
defaults held to crossfl.sites.request_rules), cited sources, the way tasks get devices, the
node diagram against the workers' CPU affinity, and an image for the site's architecture."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from crossfl.schedulers.launchers import LAUNCHERS
from crossfl.schedulers.spec import cpu_list
from crossfl.schema import FieldError
from crossfl.sites.jobs import job_spec
from crossfl.sites.request_rules import dimensions, request_of, request_problems

if TYPE_CHECKING:
    from crossfl.sites.schema import Site


def check(site: Site) -> None:
    """Raise FieldError (reported under its field) for the first rule the site breaks."""
    _check_scheduler(site)
    _check_account(site)
    _check_limits(site)
    _check_sources(site)
    _check_tasks(site)
    _check_affinity(site)
    _check_container(site)


def _check_scheduler(site: Site) -> None:
    """What the site's scheduler and launcher can do (their stated capabilities)."""
    sched = site.sched
    launcher = LAUNCHERS[site.launcher.type]
    if site.launcher.type not in sched.launchers:
        raise FieldError(
            "launcher.type",
            f"launcher {site.launcher.type!r} does not run "
            f"{sched.where}: use launcher.type {' or '.join(sched.launchers)}",
        )
    if not sched.batch and (site.directives or site.filesystems):
        raise FieldError(
            "directives",
            "a local site has no scheduler directives: remove directives and filesystems",
        )
    if site.accelerator.bind == "scheduler" and not sched.binds_gpus:
        raise FieldError(
            "accelerator.bind",
            f"{sched.title}'s launcher does not bind GPUs: use bind: local-rank",
        )
    if site.filesystems and not sched.filesystems_request:
        raise FieldError(
            "filesystems",
            f"filesystems is a PBS request (-l filesystems=); {sched.title} has none: remove it",
        )
    if site.limits_by == "qos" and not sched.has_qos:
        raise FieldError("limits_by", f"{sched.title} has no QOS: use limits_by: queue")
    several = max(site.workers_per_node(), site.ranks_per_node()) > 1
    if launcher.needs_cpus and several and job_spec(site).cpus_per_node is None:
        raise FieldError(
            "cpus_per_node",
            f"{launcher.needs_cpus}, so every worker or rank would share it: set "
            f"cpus_per_node (the CPUs of a node as {launcher.type} "
            f"{launcher.cpus_option[0]} counts them)",
        )
    problem = launcher.option_problem(site.launcher.options)
    if problem:
        raise FieldError("launcher.options", f"{problem}: remove it from launcher.options")
    if site.allowed_filesystems is not None:
        bad = [f for f in site.filesystems if f not in site.allowed_filesystems]
        if bad:
            raise FieldError(
                "filesystems",
                f"{bad} not offered at this facility: choose from {site.allowed_filesystems}",
            )
    for i, d in enumerate(site.directives):
        problem = sched.directive_problem(d)
        if problem:
            raise FieldError(f"directives[{i}]", problem)


def _check_tasks(site: Site) -> None:
    """`endpoint.tasks`: what each way of handing out a node's devices needs."""
    mode = site.endpoint.tasks
    if mode == "mpi":
        if not site.sched.batch:
            raise FieldError(
                "endpoint.tasks",
                f"the MPI engine takes its nodes from a pilot "
                f"job, and {site.sched.title} runs none: use tasks per-node",
            )
        if not LAUNCHERS[site.launcher.type].mpi:
            mpi = [t for t, launcher in LAUNCHERS.items() if launcher.mpi]
            raise FieldError(
                "launcher.type",
                f"tasks: mpi starts ranks with the site's "
                f"launcher, and {site.launcher.type!r} is none: use "
                f"{' or '.join(mpi)}",
            )
    if mode != "per-device":
        if (site.endpoint.max_workers_per_node or 1) != 1:
            raise FieldError(
                "endpoint.max_workers_per_node",
                f"tasks: {mode} runs one worker "
                "per node (or per pilot job), which starts the ranks: remove "
                "max_workers_per_node",
            )
        if site.endpoint.cpu_affinity not in ("none",) and site.endpoint.affinity_lists() is None:
            raise FieldError(
                "endpoint.cpu_affinity",
                f"{site.endpoint.cpu_affinity!r} places "
                "per-device workers; with tasks: " + mode + " give one CPU list "
                "per device (list:...) or none",
            )


def _check_account(site: Site) -> None:
    if not site.account_pattern:
        return
    try:
        rule = re.compile(site.account_pattern)
    except re.error as exc:
        raise FieldError(
            "account_pattern", f"not a regular expression ({exc}): fix the pattern"
        ) from None
    if site.account and not rule.search(site.account):
        raise FieldError(
            "account",
            f"account {site.account!r} does not match this "
            f"facility's rule {site.account_pattern!r}: use the account "
            "of the right allocation",
        )


def _check_limits(site: Site) -> None:
    if site.qos_limits and site.limits_by != "queue":
        raise FieldError(
            "qos_limits", "with limits_by: qos the QOS entries are `queues`: move them there"
        )
    if site.qos_limits and not site.sched.has_qos:
        raise FieldError("qos_limits", f"{site.sched.title} has no QOS: remove qos_limits")
    for _, _, table in dimensions(site):
        if any(e.part is not None for e in table.values()) and not site.sched.shares_nodes:
            raise FieldError("queues", f"{site.sched.title} jobs here get whole nodes: remove part")
    req, bad = request_of(site, {})
    if bad is not None:
        problems = [bad]
    else:
        assert req is not None  # request_of gives the request or the problem with it
        problems = request_problems(site, req, production=False)
    if problems:
        p = problems[0]
        # "message: fix" is split at its last ": " (crossfl.schema.problems)
        raise FieldError(p.field, f"{p.message}: {p.fix.replace(': ', ' ')}")


def _check_sources(site: Site) -> None:
    """A facility's published facts (a site that lists its facility's `docs`) cite where they
    were read."""
    if not site.docs:
        return
    for _, _, table in dimensions(site):
        field = "queues" if table is site.queues else "qos_limits"
        for name, e in table.items():
            if e.source is None:
                raise FieldError(
                    f"{field}.{name}.source",
                    "a facility's limits cite where "
                    "they are published: add source: {url: <page>, checked: "
                    "<YYYY-MM-DD>}",
                )
    if site.node is not None and site.node.source is None:
        raise FieldError(
            "node.source",
            "the node diagram cites where it is published: add "
            "source: {url: <page>, checked: <YYYY-MM-DD>}",
        )


def _check_affinity(site: Site) -> None:
    """Parsl's `list:` affinity names one CPU set per worker; with a node diagram, each
    worker's CPUs are ones a job may use and, with a device, the ones nearest its device."""
    lists = site.endpoint.affinity_lists()
    field = "endpoint.cpu_affinity"
    if lists is None:
        return
    if site.endpoint.tasks == "per-device":
        want, what = (
            site.workers_per_node(),
            "workers: give one list per worker (Parsl refuses any other count)",
        )
    else:
        want, what = (
            site.ranks_per_node(),
            "devices: give one list per device (rank i takes list i)",
        )
    if site.node_part() is None and len(lists) != want:
        raise FieldError(field, f"{len(lists)} CPU lists for {want} {what}")
    node = site.node
    if node is None:
        return
    allowed = node.cpu_set()
    ids = site.accelerator.device_ids
    for i, cpus in enumerate(lists):
        outside = sorted(set(cpus) - allowed)
        if outside:
            raise FieldError(
                field,
                f"worker {i} is given CPUs {outside} that jobs may not "
                f"use (node.cpus is {node.cpus}): leave them out",
            )
        if i < len(ids) and ids[i] in node.nearest_cpus:
            near = set(cpu_list(node.nearest_cpus[ids[i]]))
            if not set(cpus) <= near:
                raise FieldError(
                    field,
                    f"worker {i} has device {ids[i]} but CPUs "
                    f"{sorted(set(cpus) - near)} are not nearest it "
                    f"({node.nearest_cpus[ids[i]]}): use the device's own CPUs",
                )


_BRACES = re.compile(r"[{}]")
_PLAIN = re.compile(r"^[^\s'\"\\{}]*$")


def _check_container(site: Site) -> None:
    runtime = site.container.runtime
    if runtime == "none":
        return
    arch = site.arch
    if arch not in site.container.images:
        example = (
            f"crossfl-{arch}:TAG"
            if runtime == "podman-hpc"
            else f"{{{{remote_root}}}}/images/crossfl-{arch}.sif"
        )
        raise FieldError(
            f"container.images.{arch}",
            f"no image for this site's architecture {arch!r} "
            f"(accelerator.vendor {site.accelerator.vendor!r}): add "
            f'container.images.{arch}, e.g. "{example}"',
        )
    image = site.image() or ""
    if runtime == "podman-hpc" and (image.endswith(".sif") or image.startswith(("/", "$", "~"))):
        raise FieldError(
            f"container.images.{arch}",
            f"podman-hpc runs an image by name, not "
            f"the file {image!r}: give its name, e.g. crossfl-{arch}:TAG",
        )
    # Parsl formats the container launch command twice (str.format): a brace breaks it.
    words = [
        image,
        *site.container.options,
        *site.container.binds,
        *site.container.env.values(),
        *site.accelerator.env.values(),
    ]
    if runtime == "podman-hpc":  # the host's environment reaches the container only by -e
        words += [*site.env.values(), *site.proxy.env().values()]
    for w in words:
        if _BRACES.search(site.fill(w)):
            raise FieldError(
                "container",
                f"{w!r} has a brace, which breaks the launch "
                "command (Parsl formats it twice): remove it (a variable of the "
                "node's shell is written $VAR)",
            )
    if runtime == "podman-hpc":
        for k, v in {**site.env, **site.container.env, **site.accelerator.env}.items():
            if not _PLAIN.match(v):
                raise FieldError(
                    "env",
                    f"{k}={v!r} cannot pass as `podman-hpc run -e` (the "
                    "engine splits the command on spaces): use a value without "
                    "spaces or quotes",
                )
