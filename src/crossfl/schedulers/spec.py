"""The small frozen values a scheduler and a launcher work from, in the shape of Parsl's
provider and launcher arguments: what every job of a site asks for (`JobSpec`), one batch
script's header (`BatchJob`) and how a node's ranks are bound (`Binding`).

The site catalog builds them (crossfl.sites.jobs); nothing here knows a site file, so a new
scheduler is written and tested from these values alone (tests/test_schedulers.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobSpec:
    """What every job of one site asks its scheduler for (Parsl's provider arguments, less the
    walltime and sizes each request sets): the names it is charged and queued under, what it
    holds on each node, the site's own extra directives, and the pilot's standing blocks."""

    site: str  # for messages and hints ("set `account` in deploy/sites/overrides/SITE.yaml")
    account: str | None = None
    queue: str | None = None  # the partition on Slurm
    qos: str | None = None
    constraint: str | None = None  # Slurm -C
    devices_per_node: int = 0  # the accelerators a job holds on a node (all, or its part's)
    # CPUs a job holds on a node as the scheduler counts them (Slurm -c for the pilot's one
    # task per node, PBS select ncpus); with `shared_node`, its part's.
    cpus_per_node: int | None = None
    shared_node: bool = False  # part of a node shared with other jobs: never exclusive
    select_options: str = ""  # PBS select chunk extras, e.g. "system=polaris"
    filesystems: tuple[str, ...] = ()  # PBS -l filesystems=
    directives: tuple[str, ...] = ()  # the site's own directives, without their prefix
    init_blocks: int = 0
    min_blocks: int = 0


@dataclass(frozen=True)
class BatchJob:
    """One batch script's header: job name, size, walltime and extra directives."""

    name: str
    nodes: int
    walltime: str
    directives: list[str]
    ranks_per_node: int | None = None
    cpus_per_rank: int | None = None  # what the launcher line gives each rank (srun -c)
    account_hint: bool = False  # say how to pass an account when the site sets none


@dataclass(frozen=True)
class Binding:
    """How a launcher places the ranks of one node on its devices and CPUs, as the facility
    documents (Parsl's launcher arguments, and the binding its launcher lines add)."""

    options: str = ""  # the site's own launcher options (srun/mpiexec flags)
    cpus_per_node: int | None = None  # CPUs the job holds on a node (srun -c for the pilot)
    # Rank i's CPUs in cpu-list syntax (rank i on device i's CPUs), or None for no CPU binding.
    cpu_sets: tuple[str, ...] | None = None
    scheduler_binds_gpus: bool = False  # the scheduler gives each rank its GPU (srun)
    shared_node: bool = False  # part of a node: the scheduler's own binding stands

    def cpu_lists(self) -> list[list[int]] | None:
        return None if self.cpu_sets is None else [cpu_list(s) for s in self.cpu_sets]


def cpu_list(text: str) -> list[int]:
    """ "1-7,9,12-13" -> [1, ..., 7, 9, 12, 13] (the cpu-list syntax of Linux, Parsl's
    `list:` affinity and PALS `--cpu-bind list:`); ValueError on anything else."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list: write it like 1-7,9-15")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"{part!r} runs backwards in CPU list {text!r}")
        out.extend(range(a, b + 1))
    return out
