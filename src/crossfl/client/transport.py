"""Adapters by reference: the task names a file instead of carrying the bytes.

A 7B model's LoRA adapter (tens of MB) does not fit in a Globus Compute task (10 MB per
submission, 10 MiB per result). The server then writes the global adapter to a path the site's
workers can read (a shared filesystem, or the destination of a Globus Transfer) and submits
``train_round_ref`` / ``evaluate_ref`` with ``adapter_path``; the trained adapter comes back the
same way (``result_path``) when it is larger than ``inline_limit_bytes``. Everything else is the
plain task of :mod:`crossfl.client.tasks`. This module never imports server code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from crossfl.atomic import atomic_write_bytes
from crossfl.client import tasks as _tasks
from crossfl.errors import UserError

REF_KEYS = ("adapter_path", "result_path", "inline_limit_bytes")


def _read_adapter(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"adapter file {path} is not readable at this site", field="adapter_path",
                        fix="set the site's transport.shared_dir to a directory its workers can read")
    return p.read_bytes()


def _split(task: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], float]:
    if not isinstance(task, dict):
        raise UserError(f"a task must be a dict, got {type(task).__name__}")
    plain = {k: v for k, v in task.items() if k not in REF_KEYS}
    refs = {k: task[k] for k in REF_KEYS if task.get(k) is not None}
    t0 = time.perf_counter()
    if "adapter_path" in refs:
        if plain.get("adapter") is not None:
            raise UserError("a task carries both adapter and adapter_path", field="adapter_path",
                            fix="send one of them")
        plain["adapter"] = _read_adapter(str(refs["adapter_path"]))
    return plain, refs, time.perf_counter() - t0


def train_round_ref(task: dict[str, Any]) -> dict[str, Any]:
    """``train_round`` with the incoming adapter read from ``adapter_path`` and, when it is
    larger than ``inline_limit_bytes``, the trained adapter written to ``result_path``."""
    plain, refs, fetch_s = _split(task)
    result = _tasks.train_round(plain)
    blob: bytes = result["adapter"]
    t0 = time.perf_counter()
    limit = refs.get("inline_limit_bytes")
    if "result_path" in refs and (limit is None or len(blob) > int(limit)):
        atomic_write_bytes(Path(str(refs["result_path"])), blob)
        result["adapter"] = None
        result["adapter_path"] = str(refs["result_path"])
        result["adapter_nbytes"] = len(blob)
    timings = dict(result.get("timings", {}))
    timings.update(fetch_s=fetch_s, store_s=time.perf_counter() - t0)
    result["timings"] = timings
    return result


def evaluate_ref(task: dict[str, Any]) -> dict[str, Any]:
    """``evaluate`` with the adapter read from ``adapter_path``."""
    plain, _refs, _fetch_s = _split(task)
    return _tasks.evaluate(plain)
