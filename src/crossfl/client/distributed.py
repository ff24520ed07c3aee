"""Who a training rank is: its rank, world, local rank, device, and the process group.

A multi-rank training task runs one process per device. Each process learns its place from the
launcher that started it, whichever it was:

- torch's own launcher (``crossfl.client.launch`` starts the ranks of one worker with
  ``elastic_launch``): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR`` / ``MASTER_PORT`` and ``TORCHELASTIC_RUN_ID``;
- Slurm's ``srun``: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``),
  ``SLURM_LOCALID``, ``SLURM_STEP_TASKS_PER_NODE``, rank 0's host first in
  ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``);
- PALS / Cray MPICH ``mpiexec`` on PBS (Polaris, Aurora): ``PMI_RANK``, ``PMI_SIZE``,
  ``PALS_LOCAL_RANKID`` (or ``PMI_LOCAL_RANK``), ``PALS_LOCAL_SIZE`` / ``PMI_LOCAL_SIZE``,
  rank 0's host on the first line of ``PBS_NODEFILE``;
- Open MPI (``OMPI_COMM_WORLD_RANK`` / ``_SIZE`` / ``_LOCAL_RANK`` / ``_LOCAL_SIZE``) and
  MPICH's hydra (``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``, ``MPI_LOCALNRANKS``).

Rank 0's address: ``MASTER_ADDR`` when set, else the first host of the Parsl MPI task's node
list (``PARSL_MPI_NODELIST``, set by the GlobusMPIEngine), else the launcher's own node list as
above, else ``localhost`` when every rank is on one node. The port: ``MASTER_PORT`` when set,
else one derived from the job and step ids, so every rank of one launch computes the same port
and two launches in one job differ.

The collective backend is torch's default for the device type
(``torch.distributed.get_default_backend_for_device``): ``nccl`` on CUDA (RCCL on ROCm builds,
under the same name), ``xccl`` on XPU, ``gloo`` on CPU. On an XPU build of torch without XCCL,
Intel's oneCCL bindings (``import oneccl_bindings_for_pytorch``) provide the documented ``ccl``
backend, used when importable.
"""

from __future__ import annotations

import contextlib
import os
import socket
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from crossfl.client.device import ENV_VAR as DEVICE_ENV_VAR
from crossfl.client.device import select_device
from crossfl.errors import UserError

PORT_BASE = 20_000
PORT_SPAN = 20_000
T = TypeVar("T")


@dataclass(frozen=True)
class RankEnv:
    """A rank's place as its launcher states it (before any process group exists)."""

    launcher: str  # torchelastic | slurm | pals | openmpi | mpich
    rank: int
    size: int
    local_rank: int
    local_size: int
    master_addr: str
    master_port: int

    @property
    def init_method(self) -> str:
        """torchelastic ranks join the agent's store (``env://``); others rendezvous over TCP
        at rank 0's address, where rank 0 opens the store."""
        if self.launcher == "torchelastic":
            return "env://"
        return f"tcp://{self.master_addr}:{self.master_port}"


@dataclass(frozen=True)
class World:
    """One rank of a training task. ``World()`` is the single process of a one-rank task."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


# ---------------------------------------------------------------- launcher environment


def first_host(hostlist: str) -> str:
    """The first host of a Slurm hostlist: ``nid[001-004,010],login1`` -> ``nid001``;
    ``rack[1-2]-n[07-08]`` -> ``rack1-n07``; a plain ``a,b`` -> ``a``."""
    depth, end = 0, len(hostlist)
    for i, ch in enumerate(hostlist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    item, out = hostlist[:end].strip(), ""
    while "[" in item:
        head, _, rest = item.partition("[")
        inner, _, item = rest.partition("]")
        out += head + inner.split(",")[0].split("-")[0]
    return out + item


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise UserError(
                    f"{name}={value!r} is not an integer",
                    field=name,
                    fix="start the ranks with srun, mpiexec or torchrun",
                ) from None
    return None


def _tasks_per_node(value: str) -> int | None:
    """``SLURM_STEP_TASKS_PER_NODE`` like ``4(x2),3`` -> 4 (this helper's use: the first)."""
    head = value.split(",")[0].split("(")[0].strip()
    return int(head) if head.isdigit() else None


def _nodefile_first(path: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                return line.strip()
    except OSError:
        return None
    return None


def _master_addr(env: Mapping[str, str], single_node: bool) -> str | None:
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    if env.get("PARSL_MPI_NODELIST"):
        return env["PARSL_MPI_NODELIST"].split(",")[0].strip()
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"):
        if env.get(name):
            return first_host(env[name])
    if env.get("PBS_NODEFILE"):
        host = _nodefile_first(env["PBS_NODEFILE"])
        if host:
            return host
    return "localhost" if single_node else None


def _master_port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    ids = [
        env.get(k, "")
        for k in (
            "SLURM_JOB_ID",
            "SLURM_STEP_ID",
            "PBS_JOBID",
            "PALS_APID",
            "OMPI_MCA_ess_base_jobid",
            "PMI_ID",
            "PARSL_MPI_NODELIST",
        )
    ]
    return PORT_BASE + zlib.crc32(":".join(ids).encode()) % PORT_SPAN


def rank_env(env: Mapping[str, str] | None = None) -> RankEnv | None:
    """This process's place from its launcher's environment, or None when no launcher set one.
    (Every variable read here is listed in ``crossfl.client.launcher_env.LAUNCHER_ENV``.)"""
    env = os.environ if env is None else env
    found: tuple[str, int | None, int | None, int | None, int | None] | None = None
    if env.get("TORCHELASTIC_RUN_ID") and env.get("RANK"):
        found = (
            "torchelastic",
            _int(env, "RANK"),
            _int(env, "WORLD_SIZE"),
            _int(env, "LOCAL_RANK"),
            _int(env, "LOCAL_WORLD_SIZE"),
        )
    elif env.get("SLURM_PROCID") and env.get("SLURM_STEP_ID"):
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "")
        found = (
            "slurm",
            _int(env, "SLURM_PROCID"),
            _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"),
            _int(env, "SLURM_LOCALID"),
            _tasks_per_node(per_node),
        )
    elif env.get("OMPI_COMM_WORLD_RANK"):
        found = (
            "openmpi",
            _int(env, "OMPI_COMM_WORLD_RANK"),
            _int(env, "OMPI_COMM_WORLD_SIZE"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
        )
    elif env.get("PMI_RANK") and (env.get("PALS_LOCAL_RANKID") or env.get("PALS_RANKID")):
        found = (
            "pals",
            _int(env, "PMI_RANK"),
            _int(env, "PMI_SIZE"),
            _int(env, "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK"),
            _int(env, "PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE"),
        )
    elif env.get("PMI_RANK"):
        found = (
            "mpich",
            _int(env, "PMI_RANK"),
            _int(env, "PMI_SIZE"),
            _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
            _int(env, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"),
        )
    if found is None:
        return None
    launcher, rank, size, local_rank, local_size = found
    if rank is None or size is None or not 0 <= rank < size:
        raise UserError(
            f"the {launcher} environment gives rank {rank} of {size} ranks",
            field="environment",
            fix="start every rank with the same launcher line",
        )
    if local_rank is None:
        local_rank = rank if local_size in (None, size) else 0
    local_size = local_size or size
    single_node = local_size >= size
    addr = _master_addr(env, single_node)
    if addr is None:
        raise UserError(
            f"cannot tell rank 0's host from the {launcher} environment",
            field="MASTER_ADDR",
            fix="export MASTER_ADDR=<rank 0's host> before the launcher line",
        )
    return RankEnv(launcher, rank, size, local_rank, local_size, addr, _master_port(env))


# ---------------------------------------------------------------- devices and backends


def visible_devices(kind: str) -> int:
    """How many devices of ``kind`` this process sees (1 for cpu)."""
    if kind == "cuda":
        return torch.cuda.device_count()
    if kind == "xpu":
        return torch.xpu.device_count()
    return 1


def device_kind() -> str:
    """The device type ranks use (``select_device``'s). An index in ``$CROSSFL_DEVICE`` pins
    one device, which several ranks cannot share."""
    device = select_device()
    if device.index is not None:
        raise UserError(
            f"{DEVICE_ENV_VAR}={os.environ.get(DEVICE_ENV_VAR)!r} pins one device; "
            "a multi-rank task binds one device per rank",
            field=DEVICE_ENV_VAR,
            fix=f"set {DEVICE_ENV_VAR} to a type (cuda, xpu, cpu) or run one rank",
        )
    return device.type


def rank_device(kind: str, local_rank: int, visible: int) -> torch.device:
    """``kind:LOCAL_RANK`` when this process sees several devices, ``kind:0`` when the launcher
    bound one device to it (``srun --gpus-per-task=1``, an affinity script), cpu for cpu."""
    if kind == "cpu":
        return torch.device("cpu")
    if visible < 1:
        raise UserError(
            f"this rank sees no {kind} device",
            field=DEVICE_ENV_VAR,
            fix="bind a device to every rank, or run on cpu",
        )
    if visible == 1:
        return torch.device(kind, 0)
    if local_rank >= visible:
        raise UserError(
            f"local rank {local_rank} but this node shows {visible} {kind} devices",
            field="ranks_per_node",
            fix=f"start at most {visible} ranks per node",
        )
    return torch.device(kind, local_rank)


def backend_for(kind: str) -> str:
    """torch's default collective backend for ``kind`` (``ccl`` from oneCCL's bindings on an XPU
    build without XCCL)."""
    if kind == "xpu" and not dist.is_xccl_available():
        with contextlib.suppress(ImportError):
            import oneccl_bindings_for_pytorch  # noqa: F401  (registers the "ccl" backend)

            return "ccl"
    return dist.get_default_backend_for_device(kind)


def _set_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "xpu":
        torch.xpu.set_device(device)


@contextlib.contextmanager
def process_group(place: RankEnv, kind: str) -> Iterator[World]:
    """Join the task's process group for the length of the block; the World of this rank."""
    device = rank_device(kind, place.local_rank, visible_devices(kind))
    _set_device(device)
    backend = backend_for(kind)
    extra: dict[str, Any] = {"device_id": device} if device.type != "cpu" else {}
    dist.init_process_group(
        backend, init_method=place.init_method, rank=place.rank, world_size=place.size, **extra
    )
    try:
        yield World(place.rank, place.size, place.local_rank, place.local_size, device, backend)
        # No rank leaves while a peer may still be sending: a rank that exits right after its
        # last collective can close a socket its peer still writes to, and gloo aborts that
        # peer (SIGABRT) on a busy machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def single(device: torch.device) -> World:
    """The World of a one-rank task on ``device``."""
    return replace(World(), device=device)


# ---------------------------------------------------------------- data and collectives


def shard(indices: list[int], world: World) -> list[int]:
    """This rank's contiguous slice of one global batch: near-equal parts in rank order."""
    n = len(indices)
    return indices[n * world.rank // world.size : n * (world.rank + 1) // world.size]


def all_reduce(value: float | int, world: World, op: Any = None) -> float:
    """``value`` summed (or ``op``) over the ranks; the value itself for one rank."""
    if not world.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return float(t.item())


def sum_over_ranks(values: list[float], world: World) -> list[float]:
    """Each position of ``values`` summed over the ranks, in one all-reduce."""
    if not world.distributed or not values:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return [float(x) for x in t.cpu()]


def gather(obj: T, world: World) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one rank)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def hostname() -> str:
    return socket.gethostname()
