"""Site functions that do (almost) nothing, for measuring what the server and the engine add,
and for driving fault paths on a real engine: a worker that really dies, a task that really
raises.

They take the tasks of ``crossfl.client.contract`` and return its results, by reference and
inline alike, so the drivers run unchanged. They live in the client package because a worker
imports them by reference, wherever crossfl is installed.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import torch

from crossfl.client.adapter_io import adapter_from_bytes, adapter_to_bytes
from crossfl.client.contract import EvalResult, EvalTimings, TrainResult, TrainTask, TrainTimings
from crossfl.client.transport import incoming_adapter, outgoing_adapter
from crossfl.errors import UserError

KEYS = (
    "base_model.model.layers.0.self_attn.q_proj.lora_A.weight",
    "base_model.model.layers.0.self_attn.q_proj.lora_B.weight",
)


def _adapter(task: TrainTask, fill: float | None = None) -> bytes:
    incoming, _ = incoming_adapter(task)
    if incoming is not None:
        state = adapter_from_bytes(incoming)
    else:
        r = task.lora.r
        state = {KEYS[0]: torch.full((r, 16), 0.01), KEYS[1]: torch.zeros(16, r)}
    step = 0.001 * (1 + task.round % 7)
    state = {k: v.float() + step for k, v in state.items()}
    if fill is not None:
        state = {k: torch.full_like(v, fill) for k, v in state.items()}
    return adapter_to_bytes(state, task.adapter_dtype)


def _result(task: TrainTask, adapter: bytes, started: float) -> dict[str, Any]:
    result = TrainResult(
        adapter=adapter,
        num_samples=10,
        train_loss=1.0,
        first_loss=1.0,
        steps=task.local_steps,
        timings=TrainTimings(load_s=0.0, train_s=time.time() - started, serialize_s=0.0),
        started_at=started,
        finished_at=time.time(),
        device="cpu",
        host=socket.gethostname(),
        pid=os.getpid(),
        cache_hit=True,
    )
    return outgoing_adapter(task, result).to_wire()


def noop_train(task: dict[str, Any]) -> dict[str, Any]:
    """Returns the incoming adapter nudged by a constant: no model, no data."""
    started = time.time()
    spec = TrainTask.from_wire(task)
    return _result(spec, _adapter(spec), started)


def noop_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    return EvalResult(
        val_loss=1.0, num_samples=0, timings=EvalTimings(load_s=0.0, loss_s=0.0, generate_s=0.0)
    ).to_wire()


def wait_for_file(path: Path, give_up_s: float = 600.0) -> None:
    """Return once ``path`` exists (or after ``give_up_s``, so a broken test cannot hang)."""
    give_up = time.monotonic() + give_up_s
    while not path.exists() and time.monotonic() < give_up:
        time.sleep(0.05)


def faulty_train(task: dict[str, Any]) -> dict[str, Any]:
    """Behaviour chosen by the site's data file name: '*dies*' kills its worker on the first
    call, '*sleepN*' sleeps N seconds, '*nan*' returns a NaN adapter, '*far*' one far from the
    others, '*usererror*' raises a UserError; '*waits*' waits until the file ``gate`` beside
    its data exists and then creates ``arrived`` there, '*opens*' creates ``gate`` from round 2
    on and from round 3 on waits for ``arrived`` (so a test orders two sites' updates without
    racing a clock); then (or otherwise) it is noop_train."""
    started = time.time()
    spec = TrainTask.from_wire(task)
    name = Path(spec.data_path).name
    if "dies" in name:
        marker = Path(f"{spec.data_path}.died")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    gate, arrived = (Path(spec.data_path).with_name(n) for n in ("gate", "arrived"))
    if "opens" in name and spec.round >= 2:
        gate.touch()
    if "waits" in name:
        wait_for_file(gate)
        arrived.touch()
    if "opens" in name and spec.round >= 3:
        wait_for_file(arrived)
    nap = re.search(r"sleep(\d+(?:\.\d+)?)", name)
    if nap:
        time.sleep(float(nap.group(1)))
    if "usererror" in name:
        raise UserError("site data is unusable", field="data_path")
    if "nan" in name:
        return _result(spec, _adapter(spec, float("nan")), started)
    if "far" in name:
        return _result(spec, _adapter(spec, 1e3), started)
    return _result(spec, _adapter(spec), started)
