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

What comes back is data, never code: each task asks the worker to serialize its result as
JSON (`result_serializers`, the SDK's `JSONData`), and the server's `SiteSerializer` reads JSON
data only. A site whose endpoint, image or account is compromised can send any payload; one
that is not JSON (a dill pickle with a `__reduce__` that would run on the server) is refused
unread (`ResultRefused`). An MPI site's ShellFunction returns the SDK's `ShellResult`, which
JSON cannot carry: it comes as a pickle that a restricted unpickler reads, one that builds
`ShellResult` and nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import pathlib
import pickle
import sys
import threading
import typing as t
import uuid
from concurrent.futures import Executor, Future

from globus_compute_sdk.sdk.shell_function import ShellResult
from globus_compute_sdk.serialize import ComputeSerializer
from globus_compute_sdk.serialize.base import IDENTIFIER_LENGTH
from globus_compute_sdk.serialize.concretes import DillCode, DillDataBase64, JSONData

from crossfl.errors import UserError
from crossfl.schema import short_repr

if t.TYPE_CHECKING:
    from globus_compute_sdk import Executor as GlobusComputeExecutor

log = logging.getLogger(__name__)

# The Globus Compute service rejects a submission (function + arguments, batches included)
# above 10 MB; results are capped at 10 MiB by the engine itself (MaxResultSizeExceeded).
MAX_SUBMISSION_BYTES = 10 * 1000 * 1000


class PayloadTooLarge(Exception):
    """A task's packed submission is larger than the Globus Compute service accepts."""


class ResultRefused(Exception):
    """What a site sent back is not data the server reads: refused before anything is built
    from it. The site's update is dropped; the run goes on."""


def refusal(exc: BaseException | None) -> ResultRefused | None:
    """The ``ResultRefused`` behind ``exc`` (the SDK Executor wraps a failed deserialization
    in an exception of its own), or None."""
    for _ in range(16):
        if exc is None or isinstance(exc, ResultRefused):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# What a task names as its result serializers: the worker serializes the result with the first
# that works (the SDK Executor sends them with each task, the local seam hands them to the
# engine). Import paths, as the SDK sends them.
JSON_RESULTS = [f"{JSONData.__module__}.{JSONData.__name__}"]
SHELL_RESULTS = [f"{DillDataBase64.__module__}.{DillDataBase64.__name__}"]
MAX_RESULT_CHARS = 10 * 1024 * 1024  # an endpoint's result cap (MaxResultSizeExceeded)
_JSON = json.JSONDecoder()


class _ShellResultUnpickler(pickle.Unpickler):
    """Builds a ``ShellResult`` from plain data (str, int, dict): any other class or callable
    (a ``__reduce__`` naming os.system, say) stops it."""

    def find_class(self, module: str, name: str) -> t.Any:
        if (module, name) == (ShellResult.__module__, ShellResult.__name__):
            return ShellResult
        raise pickle.UnpicklingError(f"{module}.{name} is not a ShellResult")


class SiteSerializer(ComputeSerializer):
    """One site's serializer, for the local seam and the SDK Executor alike: submissions
    packed as the SDK packs them (the function by reference with DillCode, the arguments with
    the SDK's data default, or as JSON where ``json_data``: an engine that accepts nothing
    else, an MPI site's task key, crossfl.functions.allowed_serializers); results read back as
    JSON data only, or, where ``shell_results`` (an MPI site's ShellFunction), as a
    ShellResult and nothing else.

    The SDK's own ``allowed_deserializer_types`` cannot say this: it must name a code
    deserializer too, and every one of those runs code. So ``deserialize``, the one method
    the SDK Executor calls on a result, reads the payload's header itself."""

    def __init__(self, site: str, *, shell_results: bool = False, json_data: bool = False) -> None:
        super().__init__(strategy_code=DillCode(), strategy_data=JSONData() if json_data else None)
        self.site, self.shell_results, self.json_data = site, shell_results, json_data

    def deserialize(self, payload: str) -> t.Any:
        if not isinstance(payload, str) or len(payload) > MAX_RESULT_CHARS:
            raise ResultRefused(f"site {self.site} sent a result that is not a bounded text")
        header = payload[:IDENTIFIER_LENGTH]
        if header == JSONData.identifier:  # parsed in place: a result may be megabytes
            try:
                data, end = _JSON.raw_decode(payload, IDENTIFIER_LENGTH)
                if end != len(payload):
                    raise ValueError(f"text after the JSON value at {end}")
            except (ValueError, RecursionError) as exc:
                raise ResultRefused(
                    f"site {self.site} sent a result that is not valid JSON: {exc}"[:200]
                ) from None
            return data
        if header == DillDataBase64.identifier and self.shell_results:
            try:  # whatever these bytes make the unpickler raise, they are refused
                raw = base64.b64decode(payload[IDENTIFIER_LENGTH:])
                shell = _ShellResultUnpickler(io.BytesIO(raw)).load()
            except Exception as exc:
                shell = f"{type(exc).__name__}: {exc}"
            if not isinstance(shell, ShellResult):
                raise ResultRefused(
                    f"site {self.site} sent a shell result that is not a ShellResult "
                    f"({short_repr(shell)})"
                )
            return shell
        raise ResultRefused(
            f"site {self.site} sent a result that is not JSON data (serializer header "
            f"{header!r}): refused unread"
        )


def takes_json_only(engine: t.Any) -> bool:
    """Whether the engine's allowed_serializers admit JSON arguments and not dill ones."""
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


def result_serializers(shell_results: bool = False) -> list[str]:
    return list(SHELL_RESULTS if shell_results else JSON_RESULTS)


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
    if executor is not None and cmd and cmd[: len(OWN_PROCESS_GROUP)] != OWN_PROCESS_GROUP:
        executor.interchange_launch_cmd = [*OWN_PROCESS_GROUP, *cmd]


class LocalEngineExecutor(Executor):
    """A local site: its own GlobusComputeEngine, fed the way an endpoint feeds it.
    ``user_config``: the rendered user endpoint config (YAML), or that config already loaded
    with :func:`load_engine_config`. ``shell_results``: the site runs ShellFunctions (an MPI
    engine). ``serializer`` and ``results``: what an SDK Executor was given, for a stand-in
    that forwards to this engine."""

    def __init__(
        self,
        site: str,
        user_config: str | t.Any,
        run_dir: pathlib.Path,
        *,
        source: str = "user_config.yaml",
        shell_results: bool = False,
        serializer: ComputeSerializer | None = None,
        results: list[str] | None = None,
    ) -> None:
        self.site = site
        self.endpoint_id = uuid.uuid4()
        # Sent with each task, as the SDK Executor's attribute of the same name is: the MPI
        # engine's num_nodes / ranks_per_node / launcher_options (empty for other engines).
        self.resource_specification: dict[str, t.Any] | None = None
        self.result_serializers = (
            results if results is not None else result_serializers(shell_results)
        )
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
        self._serializer = serializer or SiteSerializer(
            site, shell_results=shell_results, json_data=takes_json_only(self._engine)
        )
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
                result_serializers=list(self.result_serializers),
            )
            return outer

    def _resolve(self, engine_future: Future, outer: Future) -> None:
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Result
        from globus_compute_sdk.errors import TaskExecutionFailed

        try:
            result = messagepack.unpack(engine_future.result())
            if not isinstance(result, Result):
                raise TypeError(f"the engine answered a {type(result).__name__}, not a Result")
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


def sdk_executor_class() -> type[GlobusComputeExecutor]:
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
    site: str = "",
    shell_results: bool = False,
) -> Executor:
    """A deployed facility, through the Globus Compute SDK (interactive login once, or the
    GLOBUS_COMPUTE_CLIENT_ID / GLOBUS_COMPUTE_CLIENT_SECRET client credentials). Each
    (function, id) of `function_ids` (the kit's functions as deploy registered them) is
    submitted by that id: the SDK registers nothing new, which the endpoint's allowed_functions
    would refuse. `json_data`: arguments as JSON (the endpoint accepts nothing else). Results
    are asked for, and read back, as data (:class:`SiteSerializer`; `shell_results`: an MPI
    site's ShellResult)."""
    cls = sdk_executor_class()
    executor = cls(
        endpoint_id=endpoint_id,
        user_endpoint_config=user_endpoint_config or None,
        label=label,
        serializer=SiteSerializer(site or label, shell_results=shell_results, json_data=json_data),
        result_serializers=result_serializers(shell_results),
    )
    for fn, function_id in function_ids:
        executor.register_function(fn, function_id=function_id)
    return executor
