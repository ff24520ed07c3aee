"""Which accelerator this worker uses: CUDA (also ROCm builds of torch), Intel XPU, or CPU.

The server says what the site's catalog lists (`expect`: cuda, rocm, xpu or cpu). A site with
accelerators never runs on the CPU: when torch sees no device of the expected kind, the task
fails with one line naming the device environment it saw.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

import torch

from crossfl.errors import UserError

ENV_VAR = "CROSSFL_DEVICE"
# Where a batch rank learns its index, and the variables that decide which devices it sees
# (Slurm srun; PALS mpiexec on Aurora/Polaris; PMI; Open MPI).
RANK_ENV = ("SLURM_PROCID", "PALS_RANKID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
LOCAL_RANK_ENV = (
    "SLURM_LOCALID",
    "PALS_LOCAL_RANKID",
    "PMI_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
)
DEVICE_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "ZE_FLAT_DEVICE_HIERARCHY",
)


# The variables that decide what each vendor's runtime shows, in the order they apply.
VENDOR_DEVICE_ENV: dict[str, tuple[str, ...]] = {
    "cuda": ("CUDA_VISIBLE_DEVICES",),
    "rocm": ("ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"),
    "xpu": ("ZE_FLAT_DEVICE_HIERARCHY", "ZE_AFFINITY_MASK", "ONEAPI_DEVICE_SELECTOR"),
}


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


def hip_relative_visibility(env: MutableMapping[str, str]) -> list[str]:
    """Drop CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES where they repeat ROCR_VISIBLE_DEVICES.

    Parsl's worker pool gives a worker on accelerator k both ROCR_VISIBLE_DEVICES=k and
    CUDA_VISIBLE_DEVICES=k. ROCr then shows that one GPU, which HIP numbers 0, and HIP applies
    CUDA/HIP_VISIBLE_DEVICES as indices into what ROCr shows: index k of one device is none,
    so every worker but the first sees no GPU (Parsl issue 3858,
    https://github.com/Parsl/parsl/issues/3858). OLCF's equivalent for Flux: set
    ROCR_VISIBLE_DEVICES and `unset CUDA_VISIBLE_DEVICES`
    (https://docs.olcf.ornl.gov/systems/frontier_user_guide.html#flux-in-a-slurm-allocation).
    Call before torch initializes HIP. Returns the names dropped."""
    rocr = env.get("ROCR_VISIBLE_DEVICES")
    if not rocr:
        return []
    dropped = [v for v in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES") if env.get(v) == rocr]
    for v in dropped:
        del env[v]
    return dropped


def device_environment(kind: str, env: MutableMapping[str, str] | None = None) -> str:
    """ "ROCR_VISIBLE_DEVICES=3 CUDA_VISIBLE_DEVICES=3 HIP_VISIBLE_DEVICES=unset"."""
    env = os.environ if env is None else env
    names = VENDOR_DEVICE_ENV.get(kind) or tuple(
        dict.fromkeys(n for v in VENDOR_DEVICE_ENV.values() for n in v)
    )
    return " ".join(f"{n}={env.get(n, 'unset')}" for n in names)


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _xpu_available():
        return torch.device("xpu")
    return torch.device("cpu")


def select_device(expect: str | None = None) -> torch.device:
    """``$CROSSFL_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:1``, ``xpu``...), else ``cuda``
    when available (ROCm builds report through ``torch.cuda`` too), else ``xpu``, else ``cpu``.

    `expect` is what the site's catalog lists: ``cpu`` runs on the CPU; ``cuda``, ``rocm`` or
    ``xpu`` must be what torch finds, else one UserError names the device environment seen."""
    seen = device_environment(expect or "", dict(os.environ))
    if getattr(torch.version, "hip", None):
        hip_relative_visibility(os.environ)
    override = os.environ.get(ENV_VAR, "").strip()
    if override:
        try:
            device = torch.device(override)
        except RuntimeError:
            raise UserError(
                f"{ENV_VAR}={override!r} is not a torch device",
                field=ENV_VAR,
                fix="use cpu, cuda, cuda:N or xpu",
            ) from None
        if not _backend_available(device.type):
            raise UserError(
                f"{ENV_VAR}={override!r} but this torch build sees no {device.type} device",
                field=ENV_VAR,
                fix=f"unset {ENV_VAR} or run where a {device.type} device is visible",
            )
    elif expect == "cpu":
        return torch.device("cpu")
    else:
        device = _auto_device()
    if expect in VENDOR_DEVICE_ENV and backend_name(device) != expect:
        sees = "none" if device.type == "cpu" else backend_name(device)
        raise UserError(
            f"expected a {expect} device; torch sees {sees} ({seen}; torch {torch.__version__})",
            fix=f"run the {expect} image on a node with its devices, and check the "
            "variables above (batch/smoke.sh prints what each rank sees)",
        )
    return device


def backend_name(device: torch.device) -> str:
    """``rocm`` for a cuda device on a HIP build of torch, else the device type."""
    if device.type == "cuda" and getattr(torch.version, "hip", None):
        return "rocm"
    return device.type


def _cpu_text(cpus: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3,5"."""
    runs: list[str] = []
    for c in cpus:
        if runs and c == int(runs[-1].split("-")[-1]) + 1:
            runs[-1] = f"{runs[-1].split('-')[0]}-{c}"
        else:
            runs.append(str(c))
    return ",".join(runs)


def describe_devices(expect: str | None = None) -> dict[str, object]:
    """What this worker or rank sees, as plain data (one line of the smoke test)."""
    env_seen = device_environment(expect or "")
    device = select_device(expect)
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
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "device": str(device),
        "backend": backend_name(device),
        "count": count,
        "names": names,
        "cpus": _cpu_text(cpus),
        "env": env_seen,  # as the task found it, before the HIP fix
        "torch": torch.__version__,
        "cuda": getattr(torch.version, "cuda", None),
        "hip": getattr(torch.version, "hip", None),
        "xpu": bool(_xpu_available()),
        "threads": torch.get_num_threads(),
        "override": os.environ.get(ENV_VAR) or None,
        **rank_identity(),
    }


def rank_identity() -> dict[str, object]:
    """Which rank this is and the device variables it runs with (every smoke.sh line)."""
    return {
        "rank": _first_env(RANK_ENV),
        # smoke.sh's rank (what Parsl's worker of that index gets), else the launcher's
        "local_rank": os.environ.get("CROSSFL_LOCAL_RANK") or _first_env(LOCAL_RANK_ENV),
        "visible": {n: os.environ[n] for n in DEVICE_ENV if n in os.environ},
        "host": platform.node(),
    }
