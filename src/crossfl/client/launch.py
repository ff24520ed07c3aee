"""Starting the ranks of one training task: on one worker's devices, or under an MPI launcher.

**One worker, all its devices** (``ranks_per_node`` > 1 or ``auto``): ``train_on_local_devices``
starts the ranks with torch's own launcher, ``torch.distributed.launcher.api.elastic_launch``
(the library behind ``torchrun --standalone``): a c10d rendezvous on a free local port, one
process per rank, ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set by torch,
the other ranks stopped when one fails, no restarts. It works inside a Parsl / Globus Compute
worker: the worker is a plain (non-daemon) process, so it may have children, and torch registers
its signal handlers only where it can. Each rank is a command, ``python -m crossfl.client
run-task --distributed`` on a task file in a private directory, rather than a function: a
spawned function re-imports the caller's ``__main__`` (an unguarded script would run again in
every rank), would pickle the adapter to every rank, and would be a second entry point beside
the MPI path's; with the command, both paths run the same code. Why not
``torch.multiprocessing.spawn``: a hand-picked master port and hand-written error collection,
which elastic_launch already does.

**Ranks started by the site's launcher** (``srun`` / ``mpiexec``, as Globus Compute's
``GlobusMPIEngine`` does for an ``MPIFunction`` with ``$PARSL_MPI_PREFIX``): every rank runs
``python -m crossfl.client run-task --distributed TASK.json OUT.json``
(``crossfl.client.launcher_env.rank_command``), finds its place in the launcher's environment
(``crossfl.client.distributed.rank_env``), trains (``crossfl.client.train.train_rank``), and
rank 0 writes the result. ``train_mpi_rank`` is the same as a function. Where the line that
starts the launcher exported ``CROSSFL_LAUNCHED_AT`` (seconds since the epoch; the MPI engine's
task command does), the task's ``started_at`` and ``wall_s`` count from then: the launch and
the image's start-up are part of what the task held its nodes for.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from crossfl.client import distributed
from crossfl.client.contract import TrainResult, TrainTask
from crossfl.client.distributed import process_group, rank_env
from crossfl.client.encoding import load_records
from crossfl.client.launcher_env import LAUNCHED_AT_ENV, rank_argv
from crossfl.client.model_cache import check_model_path
from crossfl.client.taskfile import read_result
from crossfl.client.train import check_enough_samples, train_rank
from crossfl.client.transport import outgoing_adapter
from crossfl.errors import UserError


def launched_at() -> tuple[float, float]:
    """(epoch seconds, perf_counter) of the moment the launcher line ran, where it said so
    (``$CROSSFL_LAUNCHED_AT``), else of now."""
    now, t = time.time(), time.perf_counter()
    try:
        then = float(os.environ.get(LAUNCHED_AT_ENV, ""))
    except ValueError:
        return now, t
    return (then, t - (now - then)) if 0 <= now - then < 7 * 86400 else (now, t)


def resolve_ranks(ranks_per_node: int | str) -> int:
    """The ranks a task starts on its worker: ``auto`` is every device of ``select_device``'s
    type this worker sees (1 on cpu); a number of cuda/xpu ranks must not exceed them."""
    kind = distributed.device_kind()
    visible = distributed.visible_devices(kind)
    if ranks_per_node == "auto":
        return visible
    ranks = int(ranks_per_node)
    if kind != "cpu" and ranks > visible:
        raise UserError(
            f"ranks_per_node is {ranks} but this worker sees {visible} {kind} devices",
            field="TrainTask.ranks_per_node",
            fix=f'use at most {visible}, or "auto"',
        )
    return ranks


# ---------------------------------------------------------------- one worker, elastic_launch


def train_on_local_devices(spec: TrainTask, ranks: int) -> dict[str, Any]:
    """Run ``spec`` on ``ranks`` processes of this worker; rank 0's result, ``wall_s`` counted
    from here (the ranks' start-up included). The ranks run the MPI path's own entry point,
    ``run-task --distributed``, on a task file in a private directory."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    started_at = time.time()
    t0 = time.perf_counter()
    check_model_path(spec.model_path)
    check_enough_samples(len(load_records(spec.data_path, spec.max_samples)), ranks)
    with tempfile.TemporaryDirectory(prefix="crossfl-ranks-") as tmp:
        task_file, out_file = write_task_file(spec, Path(tmp))
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=ranks,
            run_id=uuid.uuid4().hex,
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            local_addr="localhost",
            max_restarts=0,
            # stdout ("wrote OUT") stays in the private directory; stderr reaches the worker
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(tmp) / "logs"), redirects=Std.OUT),
        )
        try:
            elastic_launch(config, sys.executable)(*rank_argv(str(task_file), str(out_file)))
        except ChildFailedError as exc:
            written = json.loads(out_file.read_text()) if out_file.is_file() else {}
            if "error" in written:  # rank 0 wrote the bad input's message
                raise UserError(written["error"]) from None
            rank, failure = exc.get_first_failure()
            why = (
                failure.message
                if failure.message not in ("", "<NONE>")
                else (f"exit code {failure.exitcode}")
            )
            raise RuntimeError(f"training rank {rank} of {ranks} failed: {why}") from None
        result = read_result(out_file)
    result.update(started_at=started_at, wall_s=time.perf_counter() - t0)
    return outgoing_adapter(spec, TrainResult.from_wire(result)).to_wire()


def write_task_file(spec: TrainTask, folder: Path) -> tuple[Path, Path]:
    """``spec`` as a TASK.json (adapter beside it) for ``run-task``; and the OUT.json path.
    The ranks return the adapter inline (rank 0 writes it beside OUT.json): where it goes from
    there (``result_path``) is the launching worker's to decide."""
    fields = spec.model_dump(mode="json", exclude={"adapter", "result_path", "inline_limit_bytes"})
    if spec.adapter is not None:
        (folder / "adapter.safetensors").write_bytes(spec.adapter)
        fields["adapter_path"] = "adapter.safetensors"
    task_file = folder / "task.json"
    task_file.write_text(json.dumps({"task": "train_round", **fields}))
    return task_file, folder / "out.json"


# ---------------------------------------------------------------- ranks of an MPI launcher


def train_mpi_rank(task: dict[str, Any]) -> dict[str, Any] | None:
    """Train as one rank started by srun / mpiexec: the task's result on rank 0, None on the
    others. ``ranks_per_node`` is ignored: the launcher started the ranks."""
    spec = TrainTask.from_wire(task)
    place = rank_env()
    if place is None:
        raise UserError(
            "no rank in this environment (no srun, mpiexec or torchrun variables)",
            field="--distributed",
            fix="start it under the launcher, e.g. `srun -n 2 python -m "
            "crossfl.client run-task --distributed TASK OUT`",
        )
    started_at, t0 = launched_at()
    with process_group(place, distributed.device_kind()) as world:
        result = train_rank(spec, world)
    if result is None:
        return None
    result = result.model_copy(
        update={"started_at": started_at, "wall_s": time.perf_counter() - t0}
    )
    return outgoing_adapter(spec, result).to_wire()


def is_rank0() -> bool:
    """Whether this process is rank 0 (or no launcher says otherwise)."""
    try:
        place = rank_env()
    except UserError:
        return True
    return place is None or place.rank == 0
