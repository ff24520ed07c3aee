"""`python -m crossfl.client run-task TASK.json OUT.json`: one client task without an endpoint
(the facility's direct client job, `batch/client.sh`), and the image's runscript target.

TASK.json holds `{"task": "train_round" | "evaluate" | "describe", ...the task's fields}`.
Adapters travel as files beside the JSON: `adapter_path` (a safetensors file) in the task is
read into `adapter`; a returned `adapter` is written to `OUT.adapter.safetensors` and named
in the result as `adapter_path`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from crossfl.atomic import atomic_write_bytes, atomic_write_text
from crossfl.client import launch, tasks
from crossfl.errors import UserError

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
    adapter_path = spec.pop("adapter_path", None)
    if adapter_path is not None:
        adapter_file = (path.parent / adapter_path).resolve()
        if not adapter_file.is_file():
            raise UserError(f"no adapter file at {adapter_file}", file=path, field="adapter_path",
                            fix="point adapter_path at a safetensors adapter, relative to the task file")
        spec["adapter"] = adapter_file.read_bytes()
    return name, spec


def write_result(result: dict[str, Any], out: Path) -> None:
    result = dict(result)
    adapter = result.pop("adapter", None)
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


@click.group()
def main() -> None:
    """crossfl client: the code that runs at a facility."""


@main.command("run-task")
@click.argument("task_file", type=click.Path(path_type=Path))
@click.argument("out_file", type=click.Path(path_type=Path))
@click.option("--distributed", is_flag=True,
              help="Run as one rank of a multi-rank train_round started by srun, mpiexec or "
                   "torchrun; rank 0 writes OUT_FILE (on bad input: {\"error\": ...}).")
def run_task(task_file: Path, out_file: Path, distributed: bool) -> None:
    """Run one client task from TASK_FILE and write its result to OUT_FILE."""
    try:
        name, spec = read_task(task_file)
        if distributed:
            result = _rank(name, spec)
            if result is None:
                return
        else:
            result = TASKS[name](spec)
        write_result(result, out_file)
    except UserError as exc:
        click.echo(f"error: {exc.render()}", err=True)
        if distributed and launch.is_rank0():
            write_result({"error": exc.render()}, out_file)
        sys.exit(2)
    click.echo(f"{name}: wrote {out_file}")


def _rank(name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    from torch.distributed.elastic.multiprocessing.errors import record

    if name != "train_round":
        raise UserError(f"--distributed runs train_round tasks, not {name}", field="task",
                        fix="run other tasks without --distributed")
    return record(launch.train_mpi_rank)(spec)  # a failing rank's traceback, for its launcher


if __name__ == "__main__":
    main()
