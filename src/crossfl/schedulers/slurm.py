"""Slurm: sbatch/squeue/scancel, `#SBATCH`, Parsl's SlurmProvider; srun binds GPUs."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from crossfl.schedulers import register
from crossfl.schedulers.base import BatchJob, Fields, Scheduler, yaml_value

if TYPE_CHECKING:
    from crossfl.sites import Site

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_slurm_time(text: str) -> int:
    """Seconds of a Slurm --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"time {text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if b is None:
        return int(a) * 60
    if c is None:
        return int(a) * 60 + int(b)
    return int(a) * 3600 + int(b) * 60 + int(c)


@register
class Slurm(Scheduler):
    name = "slurm"
    title = "Slurm"
    provider = "SlurmProvider"
    directive_prefix = "#SBATCH"
    # sbatch options a directive may use; anything else is refused at load time (a typo in a
    # directive otherwise surfaces only as a rejected job at the facility).
    options = frozenset({
        "-A", "--account", "-p", "--partition", "-q", "--qos", "-t", "--time", "-N", "--nodes",
        "-n", "--ntasks", "--ntasks-per-node", "-c", "--cpus-per-task", "-C", "--constraint",
        "-G", "--gpus", "--gpus-per-node", "--gpus-per-task", "--gpu-bind", "--gres",
        "--gres-flags", "--exclusive", "--mem", "--mem-per-cpu", "--mem-per-gpu", "-J",
        "--job-name", "-o", "--output", "-e", "--error", "--network", "-S", "--core-spec",
        "--threads-per-core", "--hint", "--signal", "--mail-type", "--mail-user", "--licenses",
        "-L", "--reservation", "--exclude", "-x", "--nodelist", "-w", "--requeue",
        "--no-requeue", "--switches", "--time-min", "--cpu-freq", "--comment", "--export",
        "--get-user-env",
        "--image", "--module", "--volume",  # Shifter (NERSC) adds these to sbatch
    })
    option_examples = "e.g. --qos, --constraint"
    named_flags = {"account": "-A", "queue": "-p", "qos": "-q", "constraint": "-C"}
    queue_word = "partition"
    submit = "sbatch"
    query = "squeue --me -h -o '%i %j %T %M %D' 2>&1 || squeue -u \"$USER\" -h 2>&1"
    cancel = "scancel"
    local_rank_env = "SLURM_LOCALID"
    launchers = ("srun", "mpiexec", "single")
    shares_nodes = True  # e.g. Perlmutter's shared QOS: part of a node, --exclusive off

    def directive_walltime(self, directive: str) -> str | None:
        words = directive.replace("=", " ", 1).split()
        return words[1] if words[0] in ("-t", "--time") and len(words) > 1 else None

    def parse_time(self, text: str) -> int:
        return parse_slurm_time(text)

    def resource_directives(self, site: Site) -> list[str]:
        acc = site.accelerator
        part = site.node_part()
        if part is not None:  # part of a shared node: its GPUs and CPUs, nothing exclusive
            return [f"--gpus-per-node={part.devices}", f"--cpus-per-task={part.cpus}"]
        if acc.devices_per_node:  # every GPU of the node, for the pilot's one task per node
            return [f"--gpus-per-node={acc.devices_per_node}"]
        return []

    def header(self, site: Site, job: BatchJob) -> list[str]:
        p = self.directive_prefix
        lines = ["#!/bin/bash", f"{p} -J {job.name}", f"{p} -N {job.nodes}"]
        if job.ranks_per_node is not None:
            lines.append(f"{p} --ntasks-per-node={job.ranks_per_node}")
        lines += [f"{p} -t {job.walltime}", f"{p} -o {job.name}-%j.out"]
        lines += [f"{p} {d}" for d in job.directives]
        return lines + self.account_hint(site, job)

    def provider_fields(self, site: Site, var: dict[str, str]) -> Fields:
        fields: Fields = []
        if "queue" in var:
            fields.append(("partition", var["queue"]))
        fields.append(("account", var["account"]))
        if "qos" in var:
            fields.append(("qos", var["qos"]))
        if site.constraint:
            fields.append(("constraint", yaml_value(site.constraint)))
        # A pilot that gets part of a node must not ask for the whole node.
        fields.append(("exclusive", "false" if site.node_part() is not None else "true"))
        return fields + self.block_fields(site, var)
