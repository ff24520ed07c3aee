"""The environment a training rank reads (no torch here: the render code uses these names).

Every variable ``crossfl.client.distributed.rank_env`` reads to find a rank's place, by the
launcher that sets it: a container that passes no host environment (podman-hpc) must be given
them by name. ``LAUNCHED_AT_ENV``: when the launcher line ran
(``crossfl.client.launch.launched_at``). ``rank_command``: what each rank runs.
"""

from __future__ import annotations

import shlex

# torch's launcher, and what any launch may set for rank 0's address
TORCH_ENV = (
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PARSL_MPI_NODELIST",
)
SLURM_ENV = (
    "SLURM_PROCID",
    "SLURM_STEP_ID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "SLURM_LOCALID",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
    "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_ID",
)
# mpiexec: PALS / Cray MPICH on PBS, Open MPI, MPICH's hydra
MPIEXEC_ENV = (
    "PMI_RANK",
    "PMI_SIZE",
    "PMI_LOCAL_RANK",
    "PMI_LOCAL_SIZE",
    "PMI_ID",
    "PALS_RANKID",
    "PALS_LOCAL_RANKID",
    "PALS_LOCAL_SIZE",
    "PALS_APID",
    "PBS_NODEFILE",
    "PBS_JOBID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "OMPI_MCA_ess_base_jobid",
    "MPI_LOCALRANKID",
    "MPI_LOCALNRANKS",
)
LAUNCHER_ENV = (*TORCH_ENV, *SLURM_ENV, *MPIEXEC_ENV)

LAUNCHED_AT_ENV = "CROSSFL_LAUNCHED_AT"


def rank_env_names(launcher: str) -> tuple[str, ...]:
    """The variables a rank started by ``launcher`` (srun, mpiexec) reads."""
    by = {"srun": SLURM_ENV, "mpiexec": MPIEXEC_ENV}
    return (*TORCH_ENV, *by.get(launcher, ()))


def rank_argv(task_file: str, out_file: str) -> list[str]:
    """The arguments after ``python`` that every rank of a multi-rank task runs."""
    return ["-m", "crossfl.client", "run-task", "--distributed", task_file, out_file]


def rank_command(task_file: str, out_file: str, python: str = "python") -> str:
    """The command every rank runs: the body of an ``MPIFunction`` (which prefixes
    ``$PARSL_MPI_PREFIX``) or of a batch script's ``srun`` / ``mpiexec`` line."""
    return shlex.join([python, *rank_argv(task_file, out_file)])
