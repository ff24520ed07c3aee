"""`python -m crossfl.client run-task TASK.json OUT.json`: one client task without an endpoint
(the facility's direct client job, `batch/client.sh`), and the image's runscript target.

TASK.json holds `{"task": "train_round" | "evaluate" | "describe", ...the task's fields}` (the
fields of `crossfl.client.contract.TrainTask` / `EvalTask`; relative paths are taken from the
task file's directory). Adapters travel as files beside the JSON: the task's `adapter_path` (a
safetensors file) is read; a returned `adapter` is written to `OUT.adapter.safetensors` and
named in the result as `adapter_path`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from crossfl.atomic import atomic_write_bytes, atomic_write_text
from crossfl.client import tasks
from crossfl.errors import UserError

PATH_KEYS = ("model_path", "data_path", "adapter_path", "result_path")
TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train_round": tasks.train_round,
    "evaluate": tasks.evaluate,
    "describe": tasks.describe,
}


def read_task(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("task file not found", file=path, fix="give the path of a TASK.json") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg})", file=path, field=f"line {exc.lineno}",
                        fix="correct the JSON") from None
    if not isinstance(spec, dict) or spec.get("task") not in TASKS:
        raise UserError(f"`task` must be one of {', '.join(TASKS)}", file=path, field="task",
                        fix='e.g. {"task": "describe"}')
    name = spec.pop("task")
    for key in PATH_KEYS:  # relative paths are the task file's neighbours
        if isinstance(spec.get(key), str):
            spec[key] = str((path.parent / spec[key]).resolve())
    adapter_path = spec.get("adapter_path")
    if adapter_path is not None and not Path(adapter_path).is_file():
        raise UserError(f"no adapter file at {adapter_path}", file=path, field="adapter_path",
                        fix="point adapter_path at a safetensors adapter, relative to the task file")
    return name, spec


def write_result(result: dict[str, Any], out: Path) -> None:
    result = dict(result)
    adapter = result.pop("adapter", None)
    if isinstance(adapter, bytes):
        adapter_file = out.with_name(out.name + ".adapter.safetensors")
        atomic_write_bytes(adapter_file, adapter)
        result["adapter_path"] = adapter_file.name
    atomic_write_text(out, json.dumps(result, indent=2, default=str) + "\n")


@click.group()
def main() -> None:
    """crossfl client: the code that runs at a facility."""


@main.command("run-task")
@click.argument("task_file", type=click.Path(path_type=Path))
@click.argument("out_file", type=click.Path(path_type=Path))
def run_task(task_file: Path, out_file: Path) -> None:
    """Run one client task from TASK_FILE and write its result to OUT_FILE."""
    try:
        name, spec = read_task(task_file)
        write_result(TASKS[name](spec), out_file)
    except UserError as exc:
        click.echo(f"error: {exc.render()}", err=True)
        sys.exit(2)
    click.echo(f"{name}: wrote {out_file}")


if __name__ == "__main__":
    main()
