"""What the batch templates place (site_templates/batch/): the smoke test, the direct client
job and, where the image is built at the facility (on a compute node, or on the login node:
`container.image_source.method: build`), the image build. Headers and directives come from
the site's scheduler, launcher lines from its launcher."""

from __future__ import annotations

from typing import Any

from crossfl.images.buildenv import BUILD_SETTINGS
from crossfl.render.shell import (
    bind_wrapper,
    command_line,
    container_words,
    quote,
    setup_lines,
    sources_a_file,
)
from crossfl.schedulers import BatchJob, parse_walltime
from crossfl.schedulers.launchers import LAUNCHERS
from crossfl.sites import ImageBuild, Site, image_arch

CLIENT_MODULE_CMD = "python -m crossfl.client run-task"
# One JSON line per rank: its device as the client selects it (the site's expected device,
# `--expect`, or a one-line error naming the device environment it saw), CPUs and host.
DESCRIBE_DEVICES_CMD = "python -m crossfl.client devices"
# One JSON line per rank: an all-reduce (its result and bandwidth) and one DDP step of the tiny
# model, with the site's backend (crossfl.client.collective).
COLLECTIVE_CMD = "python -m crossfl.client collective"


def describe_devices_cmd(site: Site) -> str:
    expect = site.expect_device
    return DESCRIBE_DEVICES_CMD + (f" --expect {expect}" if expect else "")


def collective_cmd(site: Site) -> str:
    expect = site.expect_device
    words = [COLLECTIVE_CMD, *(["--expect", expect] if expect else [])]
    return " ".join([*words, "--mb", f"{site.smoke.mb:g}"])


def smoke_shape(site: Site) -> tuple[int, int]:
    """The collective smoke's nodes and ranks per node (at most the node's devices)."""
    per_node = site.smoke.ranks_per_node
    devices = site.devices_per_node()
    return site.smoke.nodes, min(per_node, devices) if devices else per_node


SHORT_WALLTIME = "00:10:00"  # the smoke test and the client job, inside any debug limit


def batch_context(site: Site) -> dict[str, Any]:
    sched = site.sched
    per_node = site.ranks_per_node()  # one rank per device, bound as the facility documents
    nodes = 1
    smoke_nodes, smoke_ranks = smoke_shape(site)
    limit = site.queue_limit()
    short = SHORT_WALLTIME
    if limit and limit.max_walltime and parse_walltime(limit.max_walltime) < parse_walltime(short):
        short = limit.max_walltime
    in_image = " ".join(quote(w) for w in container_words(site))
    launcher = LAUNCHERS[site.launcher.type]
    launch_all = launcher.words(site, nodes, per_node)
    launch_one = launcher.words(site, 1, 1)
    launch_collective = launcher.words(site, smoke_nodes, smoke_ranks)
    cpus = launcher.rank_cpus(site, per_node) if site.node_part() is None else None
    bind = bind_wrapper(site)
    # `bind_rank` (a shell function) picks the device; the launcher starts bash to call it.
    prefix = "bash -c 'bind_rank \"$@\"' bind_rank" if bind else ""
    directives = sched.directives(site, for_pilot=False)
    setup = (
        setup_lines(site, batch=True)
        + [site.fill(x) for x in site.worker_init]
        + (
            [site.fill(site.endpoint.worker_init_default)]
            if site.endpoint.worker_init_default
            else []
        )
    )
    return {
        "site": site.name,
        "submit": sched.submit,
        "job_start": list(sched.job_start),
        "smoke_header": sched.header(
            site,
            BatchJob(
                f"crossfl-smoke-{site.name}",
                max(nodes, smoke_nodes),
                short,
                directives,
                per_node,
                cpus,
                account_hint=True,
            ),
        ),
        "client_header": sched.header(
            site,
            BatchJob(
                f"crossfl-client-{site.name}",
                nodes,
                site.walltime,
                directives,
                1,
                launcher.rank_cpus(site, 1) if site.node_part() is None else None,
                account_hint=True,
            ),
        ),
        "setup": [{"text": line, "sources": sources_a_file(line)} for line in setup],
        "bind": bind,
        "smoke_line": command_line(launch_all, prefix, in_image, describe_devices_cmd(site)),
        "collective_line": command_line(launch_collective, prefix, in_image, collective_cmd(site)),
        "smoke_nodes": smoke_nodes,
        "smoke_ranks": smoke_ranks,
        "client_line": command_line(
            launch_one, prefix, in_image, CLIENT_MODULE_CMD + ' "$task" "$out"'
        ),
        "build": build_context(site, directives),
    }


def build_only_context(site: Site) -> dict[str, Any]:
    """What build_image.sh needs on a site without batch jobs (a login-node build only)."""
    return {"site": site.name, "submit": None, "job_start": [], "build": build_context(site, [])}


def build_context(site: Site, directives: list[str]) -> dict[str, Any] | None:
    """The on-site image build: a batch job where the facility builds on a compute node, the
    same script run with bash on the login node where the site builds its image there."""
    build = site.container.build
    on_site = site.container.image_source.method == "build"
    if site.container.runtime == "podman-hpc" and on_site:
        return podman_build_context(site)
    if site.container.runtime != "apptainer" or not (
        on_site or (build is not None and build.on_compute_node)
    ):
        return None
    build = build or ImageBuild()
    sched = site.sched
    queue_flag = sched.named_flags.get("queue")
    queue = build.queue or site.queue
    build_directives = [
        d for d in directives if not (queue_flag and d.startswith(queue_flag + " "))
    ]
    if queue_flag and queue:
        build_directives.append(f"{queue_flag} {queue}")
    build_directives += [d for d in build.directives if d not in build_directives]
    env = {**site.proxy.env(), **build.env}
    return {
        "header": sched.header(
            site, BatchJob(f"crossfl-build-{site.name}", 1, build.walltime, build_directives)
        )
        if sched.batch
        else ["#!/bin/bash"],
        "on_compute_node": build.on_compute_node,
        "module_use": build.module_use,
        "modules": build.modules,
        "env": env,
        # Apptainer uses these directories but does not create them (ALCF's setup: mkdir -p)
        "make_dirs": [k for k in ("APPTAINER_TMPDIR", "APPTAINER_CACHEDIR") if k in env],
        "options": build.options,
        # %post sees none of the host's environment: the proxies go in as build arguments
        "build_args": [s.name for s in BUILD_SETTINGS if s.name in env],
        # crossfl.images writes the def with %files paths relative to the project root:
        # build from the directory that holds build/images/ (the site's remote root).
        "root": site.fill("{{remote_root}}"),  # ~/ as $HOME/, for the comments too
        "def_file": f"build/images/crossfl-{image_arch(site)}.def",
        "image": site.image(),
        "runtime": "apptainer",
    }


# Where deploy unpacks a podman-hpc build's inputs: the Containerfile's COPY paths
# (build/images/...) are relative to this directory, the build's whole context.
OCI_CONTEXT = "build/oci"


def podman_build_context(site: Site) -> dict[str, Any]:
    """podman-hpc builds on the login node, as NERSC's podman-hpc does (its graph root under the
    node's /tmp), then `podman-hpc migrate` squashes the image into $SCRATCH/storage, which the
    compute nodes read (github.com/NERSC/podman-hpc, siteconfig.py squash_dir, checked
    2026-12-07). The tag is the build key, passed by `crossfl deploy` as the first argument;
    the endpoint and the ranks then name the image by its ID."""
    build = site.container.build or ImageBuild(options=[])
    return {
        "header": ["#!/bin/bash"],
        "on_compute_node": False,
        "module_use": build.module_use,
        "modules": build.modules,
        "env": dict(build.env),
        "make_dirs": [],
        "options": build.options,
        "build_args": [],
        "root": site.fill("{{remote_root}}") + "/" + OCI_CONTEXT,
        "def_file": f"build/images/crossfl-{image_arch(site)}.Containerfile",
        "image": site.image(),
        "runtime": "podman-hpc",
    }
