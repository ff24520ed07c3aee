"""How a job starts one process per device: Parsl's launcher for the endpoint's workers and
the launcher line of a batch script, per `launcher.type` (srun, mpiexec, single). A launcher
works from the site's `Binding` (crossfl.schedulers.spec), as Parsl's launchers from their
arguments."""

from __future__ import annotations

import shlex
from typing import ClassVar

from crossfl.schedulers.base import Fields, yaml_value
from crossfl.schedulers.spec import Binding


class Launcher:
    type: ClassVar[str]
    parsl_class: ClassVar[str]
    # Starts ranks across a pilot's nodes: what Parsl's MPI mode launches with (and aprun).
    mpi: ClassVar[bool] = False
    # Gives each task one CPU unless told more, so several workers or ranks on a node need
    # the job's CPU count (JobSpec.cpus_per_node); why, for the message that says so.
    needs_cpus: ClassVar[str | None] = None
    # The option it writes itself from the job's CPU count (cpus_per_node), and its long form:
    # the site's own launcher options must not repeat it.
    cpus_option: ClassVar[tuple[str, ...]] = ()

    def option_problem(self, options: str) -> str | None:
        """Why the site's own launcher options would be refused, or None."""
        if self.cpus_option and (
            self.cpus_option[0] in shlex.split(options)
            or any(o in options for o in self.cpus_option[1:])
        ):
            return f"{self.type}'s {self.cpus_option[0]} comes from cpus_per_node"
        return None

    def fields(self, b: Binding) -> Fields:
        """Fields under `launcher:` (after `type`)."""
        return []

    def rank_options(self, b: Binding, ranks_per_node: int) -> list[str]:
        """The options that put rank i of a node on device i and its CPUs, as the facility
        documents: what the MPI engine's `launcher_options` and batch lines add after the
        launcher's own placement (ranks, nodes)."""
        return []

    def rank_cpus(self, b: Binding, ranks_per_node: int) -> int | None:
        """The CPUs each rank asks for, where the launcher counts them (srun -c)."""
        return None

    def words(self, b: Binding, nodes: int, ranks_per_node: int) -> list[str]:
        """The launcher line of a batch job: one rank per device, bound as the facility
        documents (rank_options)."""
        return []


class Srun(Launcher):
    type = "srun"
    parsl_class = "SrunLauncher"
    mpi = True
    needs_cpus = "srun gives a task a single CPU unless -c says more"
    cpus_option = ("-c", "--cpus-per-task")

    def fields(self, b: Binding) -> Fields:
        cpus = b.cpus_per_node
        opts = " ".join(o for o in (f"-c {cpus}" if cpus else "", b.options) if o)
        return [("overrides", yaml_value(opts))] if opts else []

    def rank_cpus(self, b: Binding, ranks_per_node: int) -> int | None:
        cpus = b.cpus_per_node
        lists = b.cpu_lists()
        if not b.scheduler_binds_gpus and lists is not None:
            return max(len(c) for c in lists[:ranks_per_node])
        return cpus // ranks_per_node if cpus and cpus >= ranks_per_node else None

    def rank_options(self, b: Binding, ranks_per_node: int) -> list[str]:
        cpus = self.rank_cpus(b, ranks_per_node)
        words = [f"--cpus-per-task={cpus}"] if cpus else []
        lists = b.cpu_lists()
        if b.scheduler_binds_gpus:
            # Slurm binds one GPU per rank, the one nearest the rank's cores (OLCF: "-c7
            # --gpus-per-task=1 --gpu-bind=closest"; NERSC: "--gpu-bind=closest ... only the
            # closest GPUs are visible")
            words += ["--gpus-per-task=1", "--gpu-bind=closest"]
        elif lists is not None and not b.shared_node:
            # rank i on device i's CPUs, one bit mask per rank
            words.append(
                "--cpu-bind=mask_cpu:"
                + ",".join(hex(sum(1 << c for c in cpus)) for cpus in lists[:ranks_per_node])
            )
        return words

    def words(self, b: Binding, nodes: int, ranks_per_node: int) -> list[str]:
        return [
            "srun",
            f"--nodes={nodes}",
            # the task count too: srun reads the job's SLURM_NTASKS otherwise, and a line with
            # fewer ranks than the job's header (the collective smoke's 2 per node) is refused
            f"--ntasks={nodes * ranks_per_node}",
            f"--ntasks-per-node={ranks_per_node}",
            *self.rank_options(b, ranks_per_node),
        ]


class MpiExec(Launcher):
    type = "mpiexec"
    parsl_class = "MpiExecLauncher"
    mpi = True

    def fields(self, b: Binding) -> Fields:
        return [
            ("bind_cmd", yaml_value("--cpu-bind")),
            ("overrides", yaml_value(b.options)),
        ]

    def rank_options(self, b: Binding, ranks_per_node: int) -> list[str]:
        if b.cpu_sets is None:
            return []
        # PALS takes Parsl's list form: rank i on device i's CPUs (ALCF: "--cpu-bind=list:...")
        return ["--cpu-bind", "list:" + ":".join(b.cpu_sets[:ranks_per_node])]

    def words(self, b: Binding, nodes: int, ranks_per_node: int) -> list[str]:
        return [
            "mpiexec",
            "-n",
            str(nodes * ranks_per_node),
            "--ppn",
            str(ranks_per_node),
            *self.rank_options(b, ranks_per_node),
        ]


class Single(Launcher):
    type = "single"
    parsl_class = "SingleNodeLauncher"


LAUNCHERS: dict[str, Launcher] = {cls.type: cls() for cls in (Srun, MpiExec, Single)}
