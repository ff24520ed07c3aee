"""How a job starts one process per device: Parsl's launcher for the endpoint's workers and
the launcher line of a batch script, per `launcher.type` (srun, mpiexec, single)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, ClassVar

from crossfl.schedulers.base import Fields, yaml_value

if TYPE_CHECKING:
    from crossfl.sites import Site


class Launcher:
    type: ClassVar[str]
    parsl_class: ClassVar[str]

    def fields(self, site: Site) -> Fields:
        """Fields under `launcher:` (after `type`)."""
        return []

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        """The launcher line of a batch job: one rank per device."""
        return []

    def _cpu_bind(self, site: Site) -> list[str]:
        return shlex.split(site.cpu_bind) if site.cpu_bind else []


class Srun(Launcher):
    type = "srun"
    parsl_class = "SrunLauncher"

    def fields(self, site: Site) -> Fields:
        return [("overrides", yaml_value(site.launcher.options))] if site.launcher.options else []

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        acc = site.accelerator
        words = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={ranks_per_node}"]
        if acc.devices_per_node and acc.bind == "scheduler":  # Slurm binds one GPU per rank
            words += ["--gpus-per-task=1", "--gpu-bind=closest"]
        return words + self._cpu_bind(site)


class MpiExec(Launcher):
    type = "mpiexec"
    parsl_class = "MpiExecLauncher"

    def fields(self, site: Site) -> Fields:
        return [("bind_cmd", yaml_value("--cpu-bind")),
                ("overrides", yaml_value(site.launcher.options))]

    def words(self, site: Site, nodes: int, ranks_per_node: int) -> list[str]:
        return ["mpiexec", "-n", str(nodes * ranks_per_node), "--ppn", str(ranks_per_node),
                *self._cpu_bind(site)]


class Single(Launcher):
    type = "single"
    parsl_class = "SingleNodeLauncher"


LAUNCHERS: dict[str, Launcher] = {cls.type: cls() for cls in (Srun, MpiExec, Single)}
