"""Tasks for a site whose endpoint runs Globus Compute's GlobusMPIEngine (`endpoint.tasks: mpi`).

Such an endpoint's one worker per pilot job runs on the pilot's first node, outside the image,
with the Globus Compute SDK and nothing of crossfl. What it runs is therefore the SDK's own
``ShellFunction``, one per task kind, registered once by deploy (``crossfl.functions``): its
text starts the task's ranks with ``$PARSL_MPI_PREFIX`` (the site's srun or mpiexec for the
nodes and ranks of the task's ``resource_specification``, plus the rank binding the facility
documents as ``launcher_options``), each rank bound to its device and inside the image, running
``python -m crossfl.client run-task [--distributed] TASK OUT``; its only argument is the task
key, TASK's path, from which OUT follows. As ``MPIFunction`` does, with the launch time exported
first (the task's wall, and its node-hours, count from it).

The task file and the global adapter go where the site reads them by reference (the
transport's shared directory or Globus Transfer); rank 0 writes OUT there (and a trained
adapter at the task's ``result_path``); when the line exits 0 the server reads OUT back the
same way. The driver sees what it sees from any site: one ``TrainResult`` (``EvalResult``) per
task, from the executor's future.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from crossfl.functions import KEY_ARG
from crossfl.schedulers.launchers import LAUNCHERS
from crossfl.sites import Site, binding


class MpiTaskFailed(Exception):
    """The ranks' launch line exited non-zero (the launcher's or a rank's failure)."""


class MpiTaskRefused(Exception):
    """Rank 0 refused the task (``{"error": ...}`` in OUT): a UserError at the site, which
    another try would meet again."""


@dataclass(frozen=True)
class MpiTask:
    """What an MPI site's executor submits with the task function: the task key (the task
    file's path at the site), the resource specification it runs with, and how its
    ShellResult becomes the task's result (OUT, read back)."""

    key: str
    resource_specification: dict[str, Any]
    collect: Callable[[Any], dict[str, Any]]  # ShellResult -> the task's result


def resource_specification(site: Site, nodes: int, ranks_per_node: int) -> dict[str, Any]:
    """The MPI engine's keys (Parsl's mpi_prefix_composer accepts num_nodes, ranks_per_node,
    num_ranks, launcher_options): the nodes, one rank per device, bound as documented."""
    spec: dict[str, Any] = {"num_nodes": nodes, "ranks_per_node": ranks_per_node}
    options = LAUNCHERS[site.launcher.type].rank_options(binding(site), ranks_per_node)
    if options:
        spec["launcher_options"] = " ".join(options)
    return spec


def task_file_text(name: str, wire: dict[str, Any]) -> str:
    """A TASK.json for `run-task`: the task's fields (no adapter bytes: files only)."""
    fields = {k: v for k, v in wire.items() if not isinstance(v, bytes)}
    return json.dumps({"task": name, **fields})


def result_of(shell: Any, read_out: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """The task's result from its ShellResult and OUT: OUT's fields when the line exited 0;
    rank 0's refusal, or the line's last error, otherwise."""
    code = getattr(shell, "returncode", None)
    if code == 0:
        out = read_out()
        if out is None:
            raise MpiTaskFailed("the ranks exited 0 but rank 0 wrote no result")
        return out
    try:
        out = read_out()
    except Exception:  # no OUT at all: the launch itself failed
        out = None
    if out is not None and "error" in out:
        raise MpiTaskRefused(f"UserError: {out['error']}")
    lines = [ln for ln in str(getattr(shell, "stderr", "")).splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "no output"
    raise MpiTaskFailed(f"the ranks' launch line exited {code}: {last}")


class MpiSiteExecutor(Executor):
    """The executor of an MPI site: ``submit(task_function, MpiTask)`` sends the function with
    the task key as its one argument and the task's resource_specification (set on the inner
    executor, the SDK's ``Executor`` or a local engine's, for that one submission: both read
    it at submit time) and resolves to the task's result (``MpiTask.collect`` of the
    ShellResult)."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if kwargs or len(args) != 1 or not isinstance(args[0], MpiTask):
            raise TypeError("an MPI site runs submit(task_function, MpiTask)")
        task: MpiTask = args[0]
        with self._lock:
            self.inner.resource_specification = task.resource_specification  # type: ignore[attr-defined]
            inner = self.inner.submit(fn, **{KEY_ARG: task.key})
        outer: Future = Future()
        outer.add_done_callback(lambda f: inner.cancel() if f.cancelled() else None)
        inner.add_done_callback(lambda f: _finish(f, outer, task))
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait=wait, cancel_futures=cancel_futures)


def _finish(inner: Future, outer: Future, task: MpiTask) -> None:
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
        return
    exc = inner.exception()
    try:
        if exc is not None:
            raise exc
        result = task.collect(inner.result())
    except BaseException as err:  # the site's failure, or reading OUT back
        if not outer.done():
            outer.set_exception(err)
        return
    if not outer.done():
        outer.set_result(result)
