"""PBS Pro: qsub/qstat/qdel, `#PBS`, Parsl's PBSProProvider; PALS mpiexec does not bind GPUs,
so ranks pick theirs from PMI_LOCAL_RANK; jobs name the filesystems they use."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from crossfl.schedulers import register
from crossfl.schedulers.base import BatchJob, Fields, Scheduler, yaml_value

if TYPE_CHECKING:
    from crossfl.sites import Site


@register
class PbsPro(Scheduler):
    name = "pbs"
    title = "PBS Pro"
    provider = "PBSProProvider"
    directive_prefix = "#PBS"
    options = frozenset({
        "-A", "-N", "-q", "-l", "-k", "-j", "-o", "-e", "-m", "-M", "-W", "-V", "-v", "-r",
        "-p", "-a", "-c", "-S", "-J", "-P", "-h", "-u",
    })
    option_examples = "e.g. -l, -k, -q"
    # Resources a `-l` directive may request.
    resources: ClassVar[frozenset[str]] = frozenset({
        "select", "walltime", "filesystems", "place", "singularity_fakeroot", "ncpus", "ngpus",
        "mem", "nodes", "debug", "daos", "mpiprocs", "ompthreads", "system", "host",
    })
    named_flags = {"account": "-A", "queue": "-q"}
    account_word = "project"
    queue_required = True
    submit = "qsub"
    query = "qstat -u \"$USER\" 2>&1"
    cancel = "qdel"
    local_rank_env = "PMI_LOCAL_RANK"
    launchers = ("mpiexec", "single")
    binds_gpus = False
    filesystems_request = True
    job_start = ('cd "${PBS_O_WORKDIR:-.}"',)

    def directive_problem(self, directive: str) -> str | None:
        problem = super().directive_problem(directive)
        words = directive.split()
        if problem or words[0] != "-l":
            return problem
        if len(words) < 2:
            return "-l needs a resource, e.g. -l place=scatter"
        for part in words[1].split(","):
            res = part.split("=", 1)[0].split(":", 1)[0]
            if res not in self.resources:
                return f"PBS resource {res!r} is unknown: one of {sorted(self.resources)}"
        return None

    def lint_directive(self, site: Site, directive: str) -> list[str]:
        problems = super().lint_directive(site, directive)
        words = directive.split()
        if problems or words[0] != "-l" or site.allowed_filesystems is None:
            return problems
        for part in words[1].split(","):
            res, _, value = part.partition("=")
            bad = [f for f in value.split(":") if f not in site.allowed_filesystems]
            if res == "filesystems" and bad:
                problems.append(f"filesystems {bad} not offered; "
                                f"choose from {site.allowed_filesystems}")
        return problems

    def directive_walltime(self, directive: str) -> str | None:
        words = directive.split()
        if words[0] != "-l" or len(words) < 2:
            return None
        for part in words[1].split(","):
            res, _, value = part.partition("=")
            if res == "walltime":
                return value
        return None

    def resource_directives(self, site: Site) -> list[str]:
        return [f"-l filesystems={':'.join(site.filesystems)}"] if site.filesystems else []

    def select(self, site: Site, nodes: int) -> str:
        sel = f"select={nodes}"
        if site.select_options:
            sel += ":" + site.select_options.lstrip(":")
        return sel

    def header(self, site: Site, job: BatchJob) -> list[str]:
        p = self.directive_prefix
        lines = ["#!/bin/bash -l", f"{p} -N {job.name}", f"{p} -l {self.select(site, job.nodes)}",
                 f"{p} -l walltime={job.walltime}", f"{p} -j oe"]
        lines += [f"{p} {d}" for d in job.directives]
        return lines + self.account_hint(site, job)

    def provider_fields(self, site: Site, var: dict[str, str]) -> Fields:
        fields: Fields = [("queue", var["queue"]), ("account", var["account"])]
        if site.cpus_per_node:
            fields.append(("cpus_per_node", str(site.cpus_per_node)))
        if site.select_options:
            fields.append(("select_options", yaml_value(site.select_options)))
        return fields + self.block_fields(site, var)
