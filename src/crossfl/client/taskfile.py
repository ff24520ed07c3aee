"""The task file format of `python -m crossfl.client run-task TASK.json OUT.json`.

TASK.json holds `{"task": NAME, ...the task's fields}` (the fields of
`crossfl.client.contract.TrainTask` / `EvalTask`; relative paths are taken from the task
file's directory). Adapters travel as files beside the JSON: the task's `adapter_path` (a
safetensors file) is read by the task; a returned `adapter` is written to
`OUT.adapter.safetensors` and named in the result as `adapter_path`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from crossfl.atomic import atomic_write_bytes, atomic_write_text
from crossfl.errors import UserError

PATH_KEYS = ("model_path", "data_path", "adapter_path", "result_path")


def read_task(path: Path, known: Collection[str]) -> tuple[str, dict[str, Any]]:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            "task file not found", file=path, fix="give the path of a TASK.json"
        ) from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"not valid JSON ({exc.msg})",
            file=path,
            field=f"line {exc.lineno}",
            fix="correct the JSON",
        ) from None
    if not isinstance(spec, dict) or spec.get("task") not in known:
        raise UserError(
            f"`task` must be one of {', '.join(known)}",
            file=path,
            field="task",
            fix='e.g. {"task": "describe"}',
        )
    name = spec.pop("task")
    for key in PATH_KEYS:  # relative paths are the task file's neighbours
        if isinstance(spec.get(key), str):
            spec[key] = str((path.parent / spec[key]).resolve())
    adapter_path = spec.get("adapter_path")
    if adapter_path is not None and not Path(adapter_path).is_file():
        raise UserError(
            f"no adapter file at {adapter_path}",
            file=path,
            field="adapter_path",
            fix="point adapter_path at a safetensors adapter, relative to the task file",
        )
    return name, spec


def write_result(result: dict[str, Any], out: Path) -> None:
    result = dict(result)
    adapter = result.pop("adapter", None)
    if isinstance(adapter, str):  # a result carries its bytes as base64 text
        adapter = base64.b64decode(adapter)
    if isinstance(adapter, bytes):
        adapter_file = out.with_name(out.name + ".adapter.safetensors")
        atomic_write_bytes(adapter_file, adapter)
        result["adapter_path"] = adapter_file.name
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")


def read_result(out: Path) -> dict[str, Any]:
    """What ``write_result`` wrote, with the adapter file read back into ``adapter``."""
    result = json.loads(out.read_text())
    adapter_path = result.pop("adapter_path", None)
    if adapter_path is not None:
        result["adapter"] = (out.parent / adapter_path).read_bytes()
    return result
