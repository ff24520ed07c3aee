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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from crossfl.client import launch, tasks
from crossfl.client.taskfile import read_task, write_result
from crossfl.errors import UserError

TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train_round": tasks.train_round,
    "evaluate": tasks.evaluate,
    "describe": tasks.describe,
}


@click.group()
def main() -> None:
    """crossfl client: the code that runs at a facility."""


@main.command("devices")
@click.option(
    "--expect",
    type=click.Choice(["cuda", "rocm", "xpu", "cpu"]),
    default=None,
    help="the device the site's catalog lists; anything else is an error",
)
def devices(expect: str | None) -> None:
    """Print one JSON line: the device this process gets, its CPUs and device environment
    (batch/smoke.sh runs it once per rank). Exits 1, still printing its line, when torch
    does not see the expected device."""
    from crossfl.client.device import describe_devices, device_environment, rank_identity

    env = device_environment(expect or "")  # before select_device's HIP fix
    try:
        click.echo(json.dumps(describe_devices(expect)))
    except UserError as exc:
        click.echo(json.dumps({**rank_identity(), "env": env, "error": exc.render()}))
        sys.exit(1)


@main.command("collective")
@click.option(
    "--expect",
    type=click.Choice(["cuda", "rocm", "xpu", "cpu"]),
    default=None,
    help="the device the site's catalog lists; anything else is an error",
)
@click.option("--mb", type=float, default=64.0, show_default=True, help="all-reduce size")
@click.option("--iters", type=int, default=5, show_default=True, help="timed all-reduces")
def collective(expect: str | None, mb: float, iters: int) -> None:
    """Print one JSON line: this rank's all-reduce (result and bandwidth) and one DDP step of
    the tiny model, with its device and backend (batch/smoke.sh runs it under the site's
    launcher, 2 ranks per node). Exits 1 when a check failed."""
    from crossfl.client import collective as smoke
    from crossfl.client.device import rank_identity

    try:
        report = smoke.run(expect, mb, iters)
    except UserError as exc:
        click.echo(json.dumps({**rank_identity(), "collective": True, "error": exc.render()}))
        sys.exit(1)
    click.echo(json.dumps(report))
    if not report.get("ok"):
        sys.exit(1)


@main.command("run-task")
@click.argument("task_file", type=click.Path(path_type=Path))
@click.argument("out_file", type=click.Path(path_type=Path))
@click.option(
    "--distributed",
    is_flag=True,
    help="Run as one rank of a multi-rank train_round started by srun, mpiexec or "
    'torchrun; rank 0 writes OUT_FILE (on bad input: {"error": ...}).',
)
def run_task(task_file: Path, out_file: Path, distributed: bool) -> None:
    """Run one client task from TASK_FILE and write its result to OUT_FILE."""
    try:
        name, spec = read_task(task_file, TASKS)
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


@main.command("adapter-layout")
@click.argument("model_dir")
@click.argument("lora_json")
def adapter_layout(model_dir: str, lora_json: str) -> None:
    """Print one JSON line: the LoRA adapter's tensor names and shapes for MODEL_DIR's
    config.json and LORA_JSON (a LoraSpec), as peft builds them on the meta device (the
    server asks this of a model crossfl.client.layout does not compute itself)."""
    from crossfl.client.contract import LoraSpec
    from crossfl.client.train import peft_adapter_shapes

    try:
        lora = LoraSpec.from_wire(json.loads(lora_json))
        click.echo(json.dumps(peft_adapter_shapes(model_dir, lora)))
    except (UserError, ValueError) as exc:
        click.echo(f"error: {exc.render() if isinstance(exc, UserError) else exc}", err=True)
        sys.exit(2)


def _rank(name: str, spec: dict[str, Any]) -> dict[str, Any] | None:
    from torch.distributed.elastic.multiprocessing.errors import record

    if name != "train_round":
        raise UserError(
            f"--distributed runs train_round tasks, not {name}",
            field="task",
            fix="run other tasks without --distributed",
        )
    return record(launch.train_mpi_rank)(spec)  # a failing rank's traceback, for its launcher


if __name__ == "__main__":
    main()
