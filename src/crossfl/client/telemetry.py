"""What a training task reports about the devices it held and how busy it kept them.

Fields every ``train_round`` result carries (one rank or many):

- ``ranks``: processes that trained (one per device; 1 for today's single-process path);
- ``nodes``: distinct hosts among the ranks;
- ``devices_per_rank``: devices each rank drives (1: one rank per device);
- ``device_type``: ``cuda`` (also ROCm builds), ``xpu`` or ``cpu``;
- ``device_names``: each rank's device name, in rank order;
- ``dist_backend``: the collective backend (``nccl``, ``xccl``, ``gloo``...), None for one rank;
- ``sharded``: whether the base model was sharded across the ranks (FSDP2);
- ``accelerator_s``: device-seconds in training steps, the sum over ranks of the seconds each
  rank's device was busy inside its steps (``BusyMeter``): on a GPU the step's wall (forward,
  backward with its gradient all-reduce, optimizer step, from the batch transfer until the
  loss is on the host, which waits for the device); on CPU the rank's CPU seconds in the step
  per torch thread (at most the step's wall), so a CPU rank that waits, for a peer at an
  all-reduce or for a core another process holds, is not counted busy;
- ``train_window_s``: the training loop's wall seconds, the slowest rank's (from its first
  step's start to its last step's end);
- ``train_tokens``: tokens (prompt and answer, no padding) of the global batches trained on,
  for tokens per second (over ``timings.train_s``);
- ``wall_s``: the task's wall seconds on the worker, from the task function's start (or an MPI
  task's launch line) to its result, with the ranks' start-up, model load and serialization.

The device-busy fraction of a task, computed the same way by the server (run records,
``crossfl report``), ``make bench`` and ``make gpu-check``, is

    busy = accelerator_s / (devices held x train_window_s)

where the devices held are the nodes the task held times the site's devices per node (for a
CPU site, the ranks). It is 1.0 only when every device the task paid for computed through the
whole training loop; waits at collectives, stragglers, data between steps and idle devices
lower it. What the task held its nodes for before and after the loop (launch, rank start-up,
model load, serialization) is not in it: that is ``wall_s - train_window_s``, charged in
node-hours (over ``wall_s``) and shown beside it as start-up.

Before 2026-12 the denominator was ``wall_s``: a one-rank task on a warm worker (model cached,
no process start) and a fresh multi-rank task (every rank a new process that imports torch and
loads the model) were measured over different things, and the multi-rank figure read as idle
devices what was start-up (``make bench`` printed 97% for one rank, 9% for two).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator

import torch


def device_name(device: torch.device) -> str:
    """A device's marketing name (``NVIDIA H200``), or the host's CPU for cpu."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "xpu":
        return torch.xpu.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def device_busy_fraction(accelerator_s: float, window_s: float, devices_held: int) -> float:
    """``accelerator_s / (devices_held * window_s)`` (``window_s``: the training loop's wall);
    0.0 when nothing was held or no time passed."""
    held = devices_held * window_s
    return accelerator_s / held if held > 0 else 0.0


class BusyMeter:
    """The seconds a rank's device is busy inside training steps (``with meter.step():``).

    cuda / xpu: the step's wall; the step ends with its loss on the host, which waits for the
    device. cpu: the process's CPU seconds in the step over its torch threads, at most the
    step's wall: the CPU is the device, and time spent waiting (a peer at an all-reduce, the
    OS giving the core to another process) is CPU time not spent."""

    def __init__(self, device: torch.device) -> None:
        self.cpu = device.type == "cpu"
        self.busy_s = 0.0

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        yield
        wall = time.perf_counter() - wall0
        if self.cpu:
            used = (time.process_time() - cpu0) / max(1, torch.get_num_threads())
            self.busy_s += min(wall, used)
        else:
            self.busy_s += wall
