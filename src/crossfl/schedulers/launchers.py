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

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        """The launcher line of a batch job: one rank per device, bound as the workers are."""
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
        if site.workers_per_node() > 1 and self.pilot_cpus(site) is None:
            raise FieldError("cpus_per_node", "srun gives the pilot's one task per node a "
                             "single CPU unless -c says more, so every worker would share it: "
                             "set cpus_per_node (the CPUs of a node as srun -c counts them)")
        if "-c" in shlex.split(site.launcher.options) or "--cpus-per-task" in \
                site.launcher.options:
            raise FieldError("launcher.options", "srun's -c comes from cpus_per_node: remove "
                             "it from launcher.options")

    def fields(self, site: Site) -> Fields:
        cpus = self.pilot_cpus(site)
        opts = " ".join(o for o in (f"-c {cpus}" if cpus else "", site.launcher.options) if o)
        return [("overrides", yaml_value(opts))] if opts else []

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        acc = site.accelerator
        words = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={ranks_per_node}"]
        if acc.devices_per_node and acc.bind == "scheduler":  # Slurm binds one GPU per rank
            words += ["--gpus-per-task=1", "--gpu-bind=closest"]
        lists = site.endpoint.affinity_lists()
        part = site.node_part()
        if part is not None:
            words.append(f"--cpus-per-task={part.cpus}")
        elif lists is not None:  # rank i on worker i's CPUs, one bit mask per rank
            words += [f"--cpus-per-task={max(len(c) for c in lists)}",
                      "--cpu-bind=mask_cpu:" + ",".join(hex(sum(1 << c for c in cpus))
                                                        for cpus in lists[:ranks_per_node])]
        return words


class MpiExec(Launcher):
    type = "mpiexec"
    parsl_class = "MpiExecLauncher"

    def fields(self, site: Site) -> Fields:
        return [("bind_cmd", yaml_value("--cpu-bind")),
                ("overrides", yaml_value(site.launcher.options))]

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        words = ["mpiexec", "-n", str(nodes * ranks_per_node), "--ppn", str(ranks_per_node)]
        lists = site.endpoint.affinity_lists()
        if lists is not None:  # PALS takes Parsl's list form: rank i on worker i's CPUs
            entries = site.endpoint.cpu_affinity.split(":")[1:ranks_per_node + 1]
            words += ["--cpu-bind", "list:" + ":".join(entries)]
        return words


class Single(Launcher):
    type = "single"
    parsl_class = "SingleNodeLauncher"


LAUNCHERS: dict[str, Launcher] = {cls.type: cls() for cls in (Srun, MpiExec, Single)}
