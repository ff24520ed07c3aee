"""What each endpoint worker of a rendered site would see on a compute node, computed from the
real parts: the rendered user config as the endpoint loads it, its worker_init run by bash,
the container runtime's documented environment rules, and Parsl's own `worker()` from
process_worker_pool.py (run for real, in a subprocess: it sets the device variables and the
CPU affinity exactly as on the node). Only the node itself is modelled: its CPUs (the site's
node diagram), what the launcher hands the worker pool, `nvidia-smi`, and how each vendor's
runtime reads the device variables:

- CUDA: CUDA_VISIBLE_DEVICES lists device indices; the list stops at the first invalid one
  (https://docs.nvidia.com/cuda/cuda-c-programming-guide/#cuda-environment-variables).
- ROCm/HIP: ROCR_VISIBLE_DEVICES selects the node's GPUs; HIP_VISIBLE_DEVICES or
  CUDA_VISIBLE_DEVICES then index within the ROCr-visible set, renumbered from 0
  (https://rocm.docs.amd.com/en/docs-7.1.1/reference/env-variables.html; Parsl issue 3858,
  https://github.com/Parsl/parsl/issues/3858: ROCR=1 CUDA=1 -> "No HIP GPUs are available").
  Both set and different is not modelled: counted as no device.
- Level Zero: ZE_FLAT_DEVICE_HIERARCHY=FLAT shows the tiles as devices and ZE_AFFINITY_MASK
  lists flat indices; COMPOSITE shows whole GPUs, "X" one GPU, "X.Y" tile Y of GPU X
  (https://docs.alcf.anl.gov/aurora/data-science/frameworks/pytorch/). An unset hierarchy, or
  "X.Y" under FLAT, is not documented by ALCF: counted as no device.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossfl import sites

# Run in a fresh interpreter: Parsl's real worker() for each worker id, with the node's CPUs
# in place of this machine's (os.sched_*affinity), a manager pid that is gone (so worker()
# returns right after pinning), and the environment each worker starts with.
_DRIVER = r"""
import json, os, sys
import parsl.executors.high_throughput.process_worker_pool as pool

cfg = json.load(sys.stdin)
os.makedirs(os.path.join(cfg["logdir"], "block-0", "pool0"), exist_ok=True)
node = set(cfg["pool_cpus"])
state = {"mask": sorted(node)}
os.sched_getaffinity = lambda pid: set(state["mask"])
def setaffinity(pid, cpus):
    # The kernel keeps the CPUs the cpuset allows and refuses a mask left empty (EINVAL).
    allowed = sorted(set(cpus) & node)
    if not allowed:
        raise OSError(22, "Invalid argument")
    state["mask"] = allowed
os.sched_setaffinity = setaffinity
out = []
for wid in range(cfg["pool_size"]):
    os.environ.clear()
    os.environ.update(cfg["env"])
    state["mask"] = sorted(node)
    accel = cfg["accelerators"][wid] if cfg["accelerators"] else None
    pool.worker(worker_id=wid, pool_id="pool0", pool_size=cfg["pool_size"], task_queue=None,
                result_queue=None, monitoring_queue=None, ready_worker_count=None,
                tasks_in_progress={}, cpu_affinity=cfg["cpu_affinity"], accelerator=accel,
                block_id="0", task_queue_timeout=1, manager_pid=2 ** 30, logdir=cfg["logdir"],
                log_config=None, debug=False, mpi_launcher="mpiexec")
    out.append({"env": dict(os.environ), "cpus": state["mask"]})
print(json.dumps(out))
"""


@dataclass
class Worker:
    index: int
    env: dict[str, str]  # after Parsl pinned it (and the client's own fix, when applied)
    cpus: list[int]
    devices: list[str] | None  # what the vendor's runtime shows (None: undefined)


def shell_env(worker_init: str, base: dict[str, str]) -> dict[str, str]:
    """The environment after the rendered worker_init, run by bash (modules and mkdir are
    the node's; here they do nothing)."""
    script = "module() { :; }; ml() { :; }; mkdir() { :; }\n" + worker_init + "\nenv -0\n"
    proc = subprocess.run(
        ["bash", "-c", script], env=base, capture_output=True, timeout=60, check=True
    )
    pairs = (item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k not in ("PWD", "SHLVL", "_", "OLDPWD")}


def container_env(engine: Any, host: dict[str, str]) -> dict[str, str]:
    """The environment inside the engine's container, by the runtime's documented rules.
    Apptainer passes the host's environment (unless --cleanenv/--containall/-e) and sets X from
    APPTAINERENV_X; podman passes only what `-e K=V` / `-e K` name; a `custom` command is read
    by its first word."""
    if not engine.container_type:
        return dict(host)
    opts = shlex.split(engine.container_cmd_options or "")
    runtime = engine.container_type
    if runtime == "custom":  # the whole command: `apptainer run ...` (crossfl's Apptainer)
        runtime = opts[0] if opts else ""
    if runtime in ("apptainer", "singularity"):
        clean = any(o in ("--cleanenv", "-e", "--containall", "-C") for o in opts)
        env = {} if clean else {k: v for k, v in host.items() if not k.startswith("APPTAINERENV_")}
        env.update(
            {k[len("APPTAINERENV_") :]: v for k, v in host.items() if k.startswith("APPTAINERENV_")}
        )
        return env
    env = {}
    for flag, value in zip(opts, opts[1:], strict=False):
        if flag in ("-e", "--env"):
            key, eq, val = value.partition("=")
            if eq:
                env[key] = val
            elif key in host:
                env[key] = host[key]
    return env


def pool_cpus(site: sites.Site, engine: Any) -> list[int]:
    """The CPUs the launcher hands the worker pool on one node: srun gives its one task per node
    `-c N` CPUs (one CPU without -c); Parsl's MpiExecLauncher runs `mpiexec --cpu-bind none`,
    so the pool may use every CPU a job may use."""
    assert site.node is not None
    cpus = sorted(site.node.cpu_set())
    launcher = engine.executor.provider.launcher
    if type(launcher).__name__ == "SrunLauncher":
        words = shlex.split(launcher.overrides or "")
        n = 1
        for flag, value in zip(words, words[1:], strict=False):
            if flag in ("-c", "--cpus-per-task"):
                n = int(value)
        return cpus[:n]
    return cpus


def visible(vendor: str, env: dict[str, str], physical: list[str]) -> list[str] | None:
    """The node's devices (physical ids) the vendor's runtime shows, in order."""

    def pick(spec: str | None, among: list[str]) -> list[str]:
        if spec is None:
            return list(among)
        out = []
        for tok in spec.split(","):
            tok = tok.strip()
            if not tok.isdigit() or int(tok) >= len(among):
                break
            out.append(among[int(tok)])
        return out

    if vendor == "cuda":
        return pick(env.get("CUDA_VISIBLE_DEVICES"), physical)
    if vendor == "rocm":
        rocr = pick(env.get("ROCR_VISIBLE_DEVICES"), physical)
        hip, cuda = env.get("HIP_VISIBLE_DEVICES"), env.get("CUDA_VISIBLE_DEVICES")
        if hip is not None and cuda is not None and hip != cuda:
            return None
        return pick(hip if hip is not None else cuda, rocr)
    if vendor == "xpu":
        hierarchy = env.get("ZE_FLAT_DEVICE_HIERARCHY")
        mask = env.get("ZE_AFFINITY_MASK")
        if hierarchy == "FLAT":
            if mask is not None and "." in mask:
                return None
            return pick(mask, physical)
        if hierarchy == "COMPOSITE":
            if mask is None:
                return None  # whole GPUs: not one tile per worker
            out = []
            for tok in mask.split(","):
                gpu, dot, tile = tok.partition(".")
                if not dot:
                    return None  # a whole GPU (two tiles) as one device
                out.append(str(2 * int(gpu) + int(tile)))
            return out
        return None
    return []


def worker_views(
    site: sites.Site,
    engine: Any,
    tmp: Path,
    *,
    client_fix: bool = True,
    nvidia_smi: bool | None = None,
) -> list[Worker]:
    """What each worker of one node sees: real worker_init, real Parsl worker()."""
    from crossfl.client.device import hip_relative_visibility

    acc = site.accelerator
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp)}
    host = shell_env(engine.executor.provider.worker_init, base)
    env = container_env(engine, host)
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi is None:  # the engine's GPU flag binds the node's nvidia-smi into the image
        nvidia_smi = acc.vendor == "cuda" and not acc.simulated
    if nvidia_smi:
        lines = "".join(
            f"GPU {i}: NVIDIA A100 (UUID: GPU-{i})\\n" for i in range(acc.devices_per_node)
        )
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{lines}'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    htex = engine.executor
    node_cpus = pool_cpus(site, engine) if site.node else sorted(os.sched_getaffinity(0))
    cfg = {
        "env": env,
        "pool_cpus": node_cpus,
        "accelerators": list(htex.available_accelerators),
        "cpu_affinity": htex.cpu_affinity,
        "pool_size": int(htex.workers_per_node),
        "logdir": str(tmp / "logs"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER],
        input=json.dumps(cfg),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    physical = [str(i) for i in range(acc.devices_per_node)]
    out = []
    for i, w in enumerate(json.loads(proc.stdout)):
        wenv = dict(w["env"])
        if client_fix and acc.vendor == "rocm":  # the client, on torch's HIP build
            hip_relative_visibility(wenv)
        out.append(Worker(i, wenv, w["cpus"], visible(acc.vendor, wenv, physical)))
    return out


def binding_problems(site: sites.Site, workers: list[Worker]) -> list[str]:
    """Each worker must see exactly one device, no two the same device, and run on CPUs a
    job may use that are nearest its device (the site's node diagram)."""
    problems = []
    seen: dict[str, int] = {}
    used: set[int] = set()
    node = site.node
    for w in workers:
        if w.devices is None or len(w.devices) != 1:
            problems.append(f"worker {w.index} sees {w.devices} ({_env_text(w.env)})")
            continue
        dev = w.devices[0]
        if dev in seen:
            problems.append(f"workers {seen[dev]} and {w.index} both see device {dev}")
        seen[dev] = w.index
        if node is None:
            continue
        cpus = set(w.cpus)
        near = set(sites.cpu_list(node.nearest_cpus[dev])) if dev in node.nearest_cpus else set()
        if not cpus or not cpus <= near or not cpus <= node.cpu_set():
            problems.append(
                f"worker {w.index} (device {dev}) runs on CPUs {sorted(cpus)}, "
                f"not on those nearest its device ({node.nearest_cpus.get(dev)})"
            )
        if cpus & used:
            problems.append(f"worker {w.index} shares CPUs {sorted(cpus & used)} with another")
        used |= cpus
    return problems


def _env_text(env: dict[str, str]) -> str:
    names = (
        "CUDA_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "ZE_AFFINITY_MASK",
        "ZE_FLAT_DEVICE_HIERARCHY",
    )
    return " ".join(f"{n}={env[n]}" for n in names if n in env)
