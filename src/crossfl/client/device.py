"""Which accelerator this worker uses: CUDA (also ROCm builds of torch), Intel XPU, or CPU."""

from __future__ import annotations

import os
import platform

import torch

from crossfl.errors import UserError

ENV_VAR = "CROSSFL_DEVICE"
# Where a batch rank learns its index, and the variables that decide which devices it sees
# (Slurm srun; PALS mpiexec on Aurora/Polaris; PMI; Open MPI).
RANK_ENV = ("SLURM_PROCID", "PALS_RANKID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
LOCAL_RANK_ENV = ("SLURM_LOCALID", "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK",
                  "OMPI_COMM_WORLD_LOCAL_RANK")
DEVICE_ENV = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
              "ZE_AFFINITY_MASK", "ZE_FLAT_DEVICE_HIERARCHY")


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n) is not None), None)


def _xpu_available() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def _backend_available(kind: str) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "xpu":
        return _xpu_available()
    return False


def select_device() -> torch.device:
    """``$CROSSFL_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:1``, ``xpu``...), else ``cuda``
    when available (ROCm builds report through ``torch.cuda`` too), else ``xpu``, else ``cpu``."""
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        try:
            device = torch.device(override)
        except RuntimeError:
            raise UserError(f"{ENV_VAR}={override!r} is not a torch device", field=ENV_VAR,
                            fix="use cpu, cuda, cuda:N or xpu") from None
        if not _backend_available(device.type):
            raise UserError(f"{ENV_VAR}={override!r} but this torch build sees no {device.type} "
                            "device", field=ENV_VAR,
                            fix=f"unset {ENV_VAR} or run where a {device.type} device is visible")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _xpu_available():
        return torch.device("xpu")
    return torch.device("cpu")


def backend_name(device: torch.device) -> str:
    """``rocm`` for a cuda device on a HIP build of torch, else the device type."""
    if device.type == "cuda" and getattr(torch.version, "hip", None):
        return "rocm"
    return device.type


def describe_devices() -> dict[str, object]:
    """What this worker sees, as plain data (for smoke tests and telemetry)."""
    device = select_device()
    names: list[str] = []
    count = 0
    if device.type == "cuda":
        count = torch.cuda.device_count()
        names = [torch.cuda.get_device_name(i) for i in range(count)]
    elif device.type == "xpu":
        count = torch.xpu.device_count()
        names = [torch.xpu.get_device_name(i) for i in range(count)]
    else:
        count = 1
        names = [platform.processor() or platform.machine()]
    return {
        "device": str(device),
        "backend": backend_name(device),
        "count": count,
        "names": names,
        "torch": torch.__version__,
        "cuda": getattr(torch.version, "cuda", None),
        "hip": getattr(torch.version, "hip", None),
        "xpu": bool(_xpu_available()),
        "threads": torch.get_num_threads(),
        "override": os.environ.get(ENV_VAR) or None,
        "host": platform.node(),
        "rank": _first_env(RANK_ENV),
        "local_rank": _first_env(LOCAL_RANK_ENV),
        "visible": {n: os.environ[n] for n in DEVICE_ENV if n in os.environ},
    }
