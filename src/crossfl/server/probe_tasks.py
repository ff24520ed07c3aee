"""Client tasks that do (almost) nothing, for measuring what the server and the engine add, and
for driving fault paths on a real engine: a worker that really dies, a task that really raises.

They take the same task dicts as crossfl.client.tasks and return results of the same shape, so
the drivers run unchanged. Importable by reference at any site that has crossfl installed.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

KEYS = ("base_model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.layers.0.self_attn.q_proj.lora_B.weight")


def _adapter(task: dict[str, Any], fill: float | None = None) -> bytes:
    from crossfl.client.adapter_io import adapter_from_bytes, adapter_to_bytes

    if task.get("adapter") is not None:
        state = adapter_from_bytes(task["adapter"])
    else:
        r = int((task.get("lora") or {}).get("r", 4))
        state = {KEYS[0]: torch.full((r, 16), 0.01), KEYS[1]: torch.zeros(16, r)}
    step = 0.001 * (1 + int(task.get("round", 0)) % 7)
    state = {k: v.float() + step for k, v in state.items()}
    if fill is not None:
        state = {k: torch.full_like(v, fill) for k, v in state.items()}
    return adapter_to_bytes(state, task.get("adapter_dtype", "float32"))


def _result(task: dict[str, Any], adapter: bytes, started: float) -> dict[str, Any]:
    return {"adapter": adapter, "num_samples": 10, "train_loss": 1.0, "first_loss": 1.0,
            "steps": int(task.get("local_steps", 1)),
            "timings": {"load_s": 0.0, "train_s": time.time() - started, "serialize_s": 0.0},
            "started_at": started, "finished_at": time.time(), "device": "cpu",
            "host": socket.gethostname(), "pid": os.getpid(), "python": sys.executable,
            "cache_hit": True}


def noop_train(task: dict[str, Any]) -> dict[str, Any]:
    """Returns the incoming adapter nudged by a constant: no model, no data."""
    started = time.time()
    return _result(task, _adapter(task), started)


def noop_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    return {"val_loss": 1.0, "exact_match": {}, "num_samples": 0,
            "timings": {"load_s": 0.0, "loss_s": 0.0, "generate_s": 0.0}}


def _marker(task: dict[str, Any], what: str) -> Path:
    return Path(f"{task['data_path']}.{what}")


def faulty_train(task: dict[str, Any]) -> dict[str, Any]:
    """Behaviour chosen by the site's data file name: '*dies*' kills its worker on the first
    call, '*sleepN*' sleeps N seconds, '*nan*' returns a NaN adapter, '*far*' one far from the
    others, '*usererror*' raises a UserError; then (or otherwise) it is noop_train."""
    import re

    from crossfl.errors import UserError

    name = Path(task["data_path"]).name
    started = time.time()
    if "dies" in name:
        marker = _marker(task, "died")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    nap = re.search(r"sleep(\d+(?:\.\d+)?)", name)
    if nap:
        time.sleep(float(nap.group(1)))
    if "usererror" in name:
        raise UserError("site data is unusable", field="data_path")
    if "nan" in name:
        return _result(task, _adapter(task, float("nan")), started)
    if "far" in name:
        return _result(task, _adapter(task, 1e3), started)
    return _result(task, _adapter(task), started)
