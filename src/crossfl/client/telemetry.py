"""What a training task reports about the devices it held and how busy it kept them.

Fields every ``train_round`` result carries (one rank or many):

- ``ranks``: processes that trained (one per device; 1 for today's single-process path);
- ``nodes``: distinct hosts among the ranks;
- ``devices_per_rank``: devices each rank drives (1: one rank per device);
- ``device_type``: ``cuda`` (also ROCm builds), ``xpu`` or ``cpu``;
- ``device_names``: each rank's device name, in rank order;
- ``dist_backend``: the collective backend (``nccl``, ``xccl``, ``gloo``...), None for one rank;
- ``sharded``: whether the base model was sharded across the ranks (FSDP2);
- ``accelerator_s``: accelerator-seconds in training steps, the sum over ranks of the seconds
  each rank spent inside its steps (forward, backward with its gradient all-reduce, optimizer
  step; measured from the step's first batch transfer until its loss is on the host, which
  waits for the device);
- ``train_tokens``: tokens (prompt and answer, no padding) of the global batches trained on,
  for tokens per second (over ``timings.train_s``);
- ``wall_s``: the task's wall seconds on the worker, from the task function's start to its
  result (with the ranks' start-up, model load and adapter serialization).

The device-busy fraction of a task, computed by the server, is

    busy = accelerator_s / (devices held by the task's nodes x wall_s)

where the devices held are the nodes the task held times the site's devices per node (for a
CPU site, the ranks). It is 1.0 only when every device the task paid for spent the whole task
inside training steps; the start-up, the model load, the serialization and idle devices all
lower it.
"""

from __future__ import annotations

import platform

import torch


def device_name(device: torch.device) -> str:
    """A device's marketing name (``NVIDIA H200``), or the host's CPU for cpu."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "xpu":
        return torch.xpu.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def device_busy_fraction(accelerator_s: float, wall_s: float, devices_held: int) -> float:
    """``accelerator_s / (devices_held * wall_s)``; 0.0 when nothing was held or no time passed."""
    held = devices_held * wall_s
    return accelerator_s / held if held > 0 else 0.0
