"""The values a site hands its scheduler and launcher (crossfl.schedulers.spec), built from
the catalog entry: what every job of the site asks for (`job_spec`) and how a node's ranks are
bound (`binding`). The schedulers see these and never the site file."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossfl.schedulers.spec import Binding, JobSpec

if TYPE_CHECKING:
    from crossfl.sites.schema import Site


def job_spec(site: Site) -> JobSpec:
    """Names, what a job holds on a node (the node's devices and CPUs, or its part's where
    the site's queue shares nodes), the site's directives and its standing blocks."""
    part = site.node_part()
    return JobSpec(
        site=site.name,
        account=site.account,
        queue=site.queue,
        qos=site.qos,
        constraint=site.constraint,
        devices_per_node=site.devices_per_node(),
        cpus_per_node=part.cpus if part is not None else site.cpus_per_node,
        shared_node=part is not None,
        select_options=site.select_options,
        filesystems=tuple(site.filesystems),
        directives=tuple(site.directives),
        init_blocks=site.init_blocks,
        min_blocks=site.min_blocks,
    )


def binding(site: Site) -> Binding:
    """Rank i on device i and its CPUs (the `list:` affinity's sets), the scheduler binding
    GPUs where the catalog says so (`accelerator.bind: scheduler`), the launcher's own
    options."""
    affinity = site.endpoint.cpu_affinity
    part = site.node_part()
    acc = site.accelerator
    return Binding(
        options=site.launcher.options,
        cpus_per_node=part.cpus if part is not None else site.cpus_per_node,
        cpu_sets=tuple(affinity.split(":")[1:]) if affinity.startswith("list:") else None,
        scheduler_binds_gpus=bool(acc.devices_per_node) and acc.bind == "scheduler",
        shared_node=part is not None,
    )
