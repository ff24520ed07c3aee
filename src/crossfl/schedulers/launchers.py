"""How a job starts one process per device: Parsl's launcher for the endpoint's workers and
the launcher line of a batch script, per `launcher.type` (srun, mpiexec, single)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, ClassVar

from crossfl.schedulers.base import Fields, yaml_value
from crossfl.schema import FieldError

if TYPE_CHECKING:
    from crossfl.sites import Site


class Launcher:
    type: ClassVar[str]
    parsl_class: ClassVar[str]

    def fields(self, site: Site) -> Fields:
        """Fields under `launcher:` (after `type`)."""
        return []

    def rank_options(self, site: Site, ranks_per_node: int) -> list[str]:
        """The options that put rank i of a node on device i and its CPUs, as the facility
        documents: what the MPI engine's `launcher_options` and batch lines add after the
        launcher's own placement (ranks, nodes)."""
        return []

    def rank_cpus(self, site: Site, ranks_per_node: int) -> int | None:
        """The CPUs each rank asks for, where the launcher counts them (srun -c)."""
        return None

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        """The launcher line of a batch job: one rank per device, bound as the facility
        documents (rank_options)."""
        return []

    def check_site(self, site: Site) -> None:
        """Raise FieldError for what this launcher cannot do with the site."""


class Srun(Launcher):
    type = "srun"
    parsl_class = "SrunLauncher"

    def pilot_cpus(self, site: Site) -> int | None:
        part = site.node_part()
        return part.cpus if part is not None else site.cpus_per_node

    def check_site(self, site: Site) -> None:
        if (
            max(site.workers_per_node(), site.ranks_per_node()) > 1
            and self.pilot_cpus(site) is None
        ):
            raise FieldError(
                "cpus_per_node",
                "srun gives a task a single CPU unless -c says "
                "more, so every worker or rank would share it: set cpus_per_node "
                "(the CPUs of a node as srun -c counts them)",
            )
        if "-c" in shlex.split(site.launcher.options) or "--cpus-per-task" in site.launcher.options:
            raise FieldError(
                "launcher.options",
                "srun's -c comes from cpus_per_node: remove it from launcher.options",
            )

    def fields(self, site: Site) -> Fields:
        cpus = self.pilot_cpus(site)
        opts = " ".join(o for o in (f"-c {cpus}" if cpus else "", site.launcher.options) if o)
        return [("overrides", yaml_value(opts))] if opts else []

    def rank_cpus(self, site: Site, ranks_per_node: int) -> int | None:
        cpus = self.pilot_cpus(site)
        lists = site.endpoint.affinity_lists()
        if site.accelerator.bind != "scheduler" and lists is not None:
            return max(len(c) for c in lists[:ranks_per_node])
        return cpus // ranks_per_node if cpus and cpus >= ranks_per_node else None

    def rank_options(self, site: Site, ranks_per_node: int) -> list[str]:
        acc = site.accelerator
        cpus = self.rank_cpus(site, ranks_per_node)
        words = [f"--cpus-per-task={cpus}"] if cpus else []
        lists = site.endpoint.affinity_lists()
        if acc.devices_per_node and acc.bind == "scheduler":
            # Slurm binds one GPU per rank, the one nearest the rank's cores (OLCF: "-c7
            # --gpus-per-task=1 --gpu-bind=closest"; NERSC: "--gpu-bind=closest ... only the
            # closest GPUs are visible")
            words += ["--gpus-per-task=1", "--gpu-bind=closest"]
        elif lists is not None and site.node_part() is None:
            # rank i on device i's CPUs, one bit mask per rank
            words.append(
                "--cpu-bind=mask_cpu:"
                + ",".join(hex(sum(1 << c for c in cpus)) for cpus in lists[:ranks_per_node])
            )
        return words

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        return [
            "srun",
            f"--nodes={nodes}",
            # the task count too: srun reads the job's SLURM_NTASKS otherwise, and a line with
            # fewer ranks than the job's header (the collective smoke's 2 per node) is refused
            f"--ntasks={nodes * ranks_per_node}",
            f"--ntasks-per-node={ranks_per_node}",
            *self.rank_options(site, ranks_per_node),
        ]


class MpiExec(Launcher):
    type = "mpiexec"
    parsl_class = "MpiExecLauncher"

    def fields(self, site: Site) -> Fields:
        return [
            ("bind_cmd", yaml_value("--cpu-bind")),
            ("overrides", yaml_value(site.launcher.options)),
        ]

    def rank_options(self, site: Site, ranks_per_node: int) -> list[str]:
        lists = site.endpoint.affinity_lists()
        if lists is None:
            return []
        # PALS takes Parsl's list form: rank i on device i's CPUs (ALCF: "--cpu-bind=list:...")
        entries = site.endpoint.cpu_affinity.split(":")[1 : ranks_per_node + 1]
        return ["--cpu-bind", "list:" + ":".join(entries)]

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        return [
            "mpiexec",
            "-n",
            str(nodes * ranks_per_node),
            "--ppn",
            str(ranks_per_node),
            *self.rank_options(site, ranks_per_node),
        ]


class Single(Launcher):
    type = "single"
    parsl_class = "SingleNodeLauncher"


LAUNCHERS: dict[str, Launcher] = {cls.type: cls() for cls in (Srun, MpiExec, Single)}
