"""Adapters by reference, at the site: a task may name a file instead of carrying the bytes.

A 7B model's LoRA adapter (tens of MB) does not fit in a Globus Compute task (10 MB per
submission, 10 MiB per result). The server then writes the global adapter to a path the site's
workers can read (a shared filesystem, or the destination of a Globus Transfer) and the task
names it in ``adapter_path``; the trained adapter goes back the same way (``result_path``) when
it is larger than ``inline_limit_bytes``. This module never imports server code.
"""

from __future__ import annotations

import time
from pathlib import Path

from crossfl.atomic import atomic_write_bytes
from crossfl.client.contract import SiteTask, TrainResult, TrainTask
from crossfl.errors import UserError


def incoming_adapter(task: SiteTask) -> tuple[bytes | None, float]:
    """The task's adapter (its bytes, or the file it names) and the seconds reading it took."""
    if task.adapter_path is None:
        return task.adapter, 0.0
    t0 = time.perf_counter()
    path = Path(task.adapter_path)
    if not path.is_file():
        raise UserError(
            f"adapter file {path} is not readable at this site",
            field="adapter_path",
            fix="set the site's transport.shared_dir to a directory its workers can read",
        )
    return path.read_bytes(), time.perf_counter() - t0


def outgoing_adapter(task: TrainTask, result: TrainResult) -> TrainResult:
    """Write a result's adapter to ``result_path`` when the task asks and it is over the
    inline limit; the result then names the file instead of carrying the bytes."""
    blob = result.adapter
    limit = task.inline_limit_bytes
    if task.result_path is None or blob is None or (limit is not None and len(blob) <= limit):
        return result
    t0 = time.perf_counter()
    atomic_write_bytes(Path(task.result_path), blob)
    timings = result.timings.model_copy(update={"store_s": time.perf_counter() - t0})
    return result.model_copy(
        update={
            "adapter": None,
            "adapter_path": task.result_path,
            "adapter_nbytes": len(blob),
            "timings": timings,
        }
    )
