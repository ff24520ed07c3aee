"""One seam for every site: a `concurrent.futures.Executor`.

Real facilities are reached through the Globus Compute SDK's `Executor(endpoint_id=...)`.
Local sites run on the real endpoint engine: the site's rendered user config is loaded with
globus-compute-endpoint's own loader, its `GlobusComputeEngine` is started, and every task goes
in and out exactly as an endpoint moves it: the SDK's `ComputeSerializer` packs function, args and
kwargs into a messagepack `Task`, the engine runs it in its worker pool (result-size limit
included), and the messagepack `Result` is unpacked here (a failure raises the SDK's own
`TaskExecutionFailed`, as the SDK Executor does). Only the Globus web service, the relay
between the two, is absent; its submission limit is enforced here as the service would.

Functions travel by reference (`DillCode` pickles an importable function by its name): the server never ships source text; what runs is
the code installed at the site.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
import threading
import typing as t
import uuid
from concurrent.futures import Executor, Future

from crossfl.errors import UserError

log = logging.getLogger(__name__)

# The Globus Compute service rejects a submission (function + arguments, batches included)
# above 10 MB; results are capped at 10 MiB by the engine itself (MaxResultSizeExceeded).
MAX_SUBMISSION_BYTES = 10 * 1000 * 1000


class PayloadTooLarge(Exception):
    """A task's packed submission is larger than the Globus Compute service accepts."""


def code_serializer(*, json_data: bool = False) -> t.Any:
    """The serializer both seams use: functions by reference (DillCode), data with the SDK's
    default (dill), or as JSON for an engine that accepts nothing else (an MPI site's task key:
    crossfl.functions.allowed_serializers)."""
    from globus_compute_sdk.serialize import ComputeSerializer
    from globus_compute_sdk.serialize.concretes import DillCode, JSONData

    return ComputeSerializer(
        strategy_code=DillCode(), strategy_data=JSONData() if json_data else None
    )


def takes_json_only(engine: t.Any) -> bool:
    """Whether the engine's allowed_serializers admit JSON arguments and not dill ones."""
    from globus_compute_sdk.serialize.concretes import DillDataBase64, JSONData

    allowed = getattr(getattr(engine, "serde", None), "allowed_deserializer_types", None) or ()
    return JSONData in allowed and DillDataBase64 not in allowed


def failure_summary(exc: BaseException) -> str:
    """One line for a failed task: the last line of the site's traceback, or the error."""
    text = getattr(exc, "remote_data", None) or str(exc) or type(exc).__name__
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().strip("-+")]
    return lines[-1] if lines else type(exc).__name__


def load_engine_config(user_config_yaml: str, *, source: str) -> t.Any:
    """Load a rendered user endpoint config with the endpoint package's own loader."""
    import click
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    try:
        config = load_config_yaml(user_config_yaml)
    except click.ClickException as exc:
        raise UserError(
            exc.format_message(),
            file=source,
            fix="fix the site's template or options and render again",
        ) from None
    if getattr(config, "engine", None) is None:
        raise UserError(
            "the config has no `engine:`; it is a core endpoint config",
            file=source,
            fix="pass the rendered user config, not config.yaml",
        )
    return config


def ensure_endpoint_tools_on_path() -> None:
    """The engine starts `globus-compute-endpoint` (interchange) and `process_worker_pool.py`
    by name, as an endpoint installed in this environment would: put this interpreter's
    scripts directory first on PATH so a venv that was not activated still works."""
    scripts = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if scripts not in parts:
        os.environ["PATH"] = os.pathsep.join([scripts, *parts])


# Parsl starts a local engine's worker pools in process groups of their own; its interchange
# stays in the server's, so Ctrl-C in a terminal (SIGINT to the whole foreground group) killed
# it, and the engine's shutdown then waited for its reply forever. It gets its own group too,
# and the server shuts it down.
OWN_PROCESS_GROUP = (
    sys.executable,
    "-c",
    "import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])",
)


def in_own_process_group(engine: t.Any) -> None:
    """Have ``engine`` start its interchange in a process group of its own."""
    executor = getattr(engine, "executor", None)
    cmd = tuple(getattr(executor, "interchange_launch_cmd", None) or ())
    if cmd and cmd[: len(OWN_PROCESS_GROUP)] != OWN_PROCESS_GROUP:
        executor.interchange_launch_cmd = [*OWN_PROCESS_GROUP, *cmd]


class LocalEngineExecutor(Executor):
    """A local site: its own GlobusComputeEngine, fed the way an endpoint feeds it.
    ``user_config``: the rendered user endpoint config (YAML), or that config already loaded
    with :func:`load_engine_config`."""

    def __init__(
        self,
        site: str,
        user_config: str | t.Any,
        run_dir: pathlib.Path,
        *,
        source: str = "user_config.yaml",
    ) -> None:
        self.site = site
        self.endpoint_id = uuid.uuid4()
        # Sent with each task, as the SDK Executor's attribute of the same name is: the MPI
        # engine's num_nodes / ranks_per_node / launcher_options (empty for other engines).
        self.resource_specification: dict[str, t.Any] | None = None
        self._lock = threading.Lock()
        self._closed = False
        config = (
            load_engine_config(user_config, source=source)
            if isinstance(user_config, str)
            else user_config
        )
        ensure_endpoint_tools_on_path()
        self._engine = config.engine
        # pack as the engine accepts (its allowed_serializers), as the SDK Executor is told to
        self._serializer = code_serializer(json_data=takes_json_only(self._engine))
        in_own_process_group(self._engine)
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._engine.start(endpoint_id=self.endpoint_id, run_dir=str(run_dir))
        except BaseException:
            self._shutdown_engine()
            raise

    def pack(
        self, fn: t.Callable[..., t.Any], args: tuple, kwargs: dict
    ) -> tuple[uuid.UUID, bytes]:
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task

        ser = self._serializer
        buffer = ser.pack_buffers([ser.serialize(fn), ser.serialize(args), ser.serialize(kwargs)])
        task_id = uuid.uuid4()
        packed = messagepack.pack(Task(task_id=task_id, task_buffer=buffer))
        if len(packed) > MAX_SUBMISSION_BYTES:
            raise PayloadTooLarge(
                f"task for site {self.site} is {len(packed) / 1e6:.1f} MB packed; Globus Compute "
                f"accepts at most {MAX_SUBMISSION_BYTES / 1e6:.0f} MB per submission"
            )
        return task_id, packed

    def submit(self, fn: t.Callable[..., t.Any], /, *args: t.Any, **kwargs: t.Any) -> Future:
        from globus_compute_endpoint.engines.base import GCFuture

        with self._lock:
            if self._closed:
                raise RuntimeError(f"executor for site {self.site} is shut down")
            task_id, packed = self.pack(fn, args, kwargs)
            outer: Future = Future()
            engine_future = GCFuture(task_id)
            engine_future.add_done_callback(lambda f: self._resolve(f, outer))
            self._engine.submit(
                engine_future,
                packed,
                resource_specification=dict(self.resource_specification or {}),
            )
            return outer

    def _resolve(self, engine_future: Future, outer: Future) -> None:
        from globus_compute_common import messagepack
        from globus_compute_sdk.errors import TaskExecutionFailed

        try:
            result = messagepack.unpack(engine_future.result())
            if result.is_error:
                outer.set_exception(TaskExecutionFailed(result.data))
            else:
                outer.set_result(self._serializer.deserialize(result.data))
        except BaseException as exc:  # never leave the caller waiting forever
            if not outer.done():
                outer.set_exception(exc)

    def processes(self) -> list[tuple[str, int]]:
        """The engine's processes on this machine, as (role, pid): its interchange, and the
        shell that holds each worker pool it started (LocalProvider blocks; a batch
        scheduler's blocks are jobs, not processes here). Read from Parsl's executor."""
        executor = getattr(self._engine, "executor", None)
        found: list[tuple[str, int]] = []
        interchange = getattr(executor, "interchange_proc", None)
        if interchange is not None:
            found.append(("interchange", interchange.pid))
        resources = getattr(getattr(executor, "provider", None), "resources", None) or {}
        for job in list(resources.values()):
            if isinstance(job, dict) and isinstance(job.get("remote_pid"), int):
                found.append(("workers", job["remote_pid"]))
        return found

    def _shutdown_engine(self) -> None:
        with contextlib.suppress(Exception):
            self._engine.shutdown(block=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown_engine()


def sdk_executor_class() -> type[Executor]:
    """The Globus Compute SDK Executor: the one class tests substitute (at its interface)."""
    from globus_compute_sdk import Executor as GlobusComputeExecutor

    return GlobusComputeExecutor


def sdk_client_class() -> type:
    """The Globus Compute SDK Client (function registration, at deploy): substituted by tests
    at its interface, as the Executor is."""
    from globus_compute_sdk import Client

    return Client


def remote_executor(
    endpoint_id: str,
    user_endpoint_config: dict[str, t.Any] | None = None,
    label: str = "crossfl",
    *,
    json_data: bool = False,
    function_ids: t.Iterable[tuple[t.Callable[..., t.Any], str]] = (),
) -> Executor:
    """A deployed facility, through the Globus Compute SDK (interactive login once, or the
    GLOBUS_COMPUTE_CLIENT_ID / GLOBUS_COMPUTE_CLIENT_SECRET client credentials). Each
    (function, id) of `function_ids` (the kit's functions as deploy registered them) is
    submitted by that id: the SDK registers nothing new, which the endpoint's allowed_functions
    would refuse. `json_data`: arguments as JSON (the endpoint accepts nothing else)."""
    cls = sdk_executor_class()
    executor = cls(
        endpoint_id=endpoint_id,
        user_endpoint_config=user_endpoint_config or None,
        label=label,
        serializer=code_serializer(json_data=json_data),
    )
    for fn, function_id in function_ids:
        executor.register_function(fn, function_id=function_id)  # type: ignore[attr-defined]
    return executor
