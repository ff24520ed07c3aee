"""How adapters travel between the server and a site.

- ``inline``: the adapter bytes ride inside the Globus Compute task and result (up to the
  inline limit: a submission is capped at 10 MB, a result at 10 MiB after serialization).
- ``shared_fs``: the server writes the global adapter to a directory the site's workers read
  (for local sites a directory in the run directory) and the task names the file
  (``adapter_path``); the site writes a large result beside it (``result_path``).
- ``globus_transfer``: as shared_fs, with a Globus Transfer (globus-sdk ``TransferClient``)
  from the server's collection to the site's before the task, and back after it.
- ``auto``: inline when the adapter fits the limit, else shared_fs for sites that have a shared
  directory (local sites always do), else globus_transfer when both collections are set.

A site whose endpoint runs the MPI engine (``endpoint.tasks: mpi``) gets its task as a file
too, whatever the adapter's size: shared_fs where it has a shared directory, else
globus_transfer; its result comes back as a file (``crossfl.server.mpi_tasks``).

Bytes moved are counted per task and per direction, whichever way they went.

What a site writes back by reference is read as data, and only from where the server told it
to write: a result must name exactly the ``result_path`` its task carried (no ``..``, no other
directory), and the file is opened below the site's transport directory one name at a time
without following a symbolic link (``openat`` with ``O_NOFOLLOW``) and without blocking, and
read only when it is a regular file no larger than the adapter's layout allows. A FIFO,
``/dev/zero``, a link out of the directory or an oversized file is refused (``ResultRefused``).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossfl.atomic import atomic_write_bytes
from crossfl.client import tasks as client_tasks
from crossfl.client.contract import EvalTask, SiteTask, TrainResult, TrainTask
from crossfl.endpoints import ResultRefused
from crossfl.errors import UserError
from crossfl.functions import kit_functions
from crossfl.schema import short_repr
from crossfl.server.experiment import GlobusCollection, SiteEntry
from crossfl.server.mpi_tasks import (
    MpiTask,
    resource_specification,
    result_of,
    task_file_text,
)
from crossfl.server.plan import RunPlan


class TransferFailed(Exception):
    """A Globus Transfer task did not succeed in time (a system failure: worth retrying)."""


@dataclass(frozen=True)
class TaskFns:
    """The functions a site runs (by reference); benchmarks and fault tests swap in probes
    (``crossfl.client.probes``)."""

    train: Callable[..., Any] = client_tasks.train_round
    evaluate: Callable[..., Any] = client_tasks.evaluate


MAX_OUT_BYTES = 16 * 1024 * 1024
"""An MPI task's OUT.json (a result without adapter bytes) is never larger."""


@dataclass
class Outgoing:
    fn: Callable[..., Any]
    payload: Any  # the task on the wire (an MPI site: an MpiTask)
    mode: str
    bytes_down: int
    result_rel: str | None = None  # where the site was told to write its adapter (by reference)


@dataclass
class Incoming:
    adapter: bytes
    mode: str
    bytes_up: int
    fetch_s: float


class GlobusMover:
    """Moves files between the server's collection and a site's with Globus Transfer.
    ``client`` is a ``globus_sdk.TransferClient`` (or anything with its submit_transfer,
    task_wait and get_task)."""

    def __init__(
        self, client: Any, server: GlobusCollection, timeout_s: float, poll_s: int = 5
    ) -> None:
        self.client, self.server, self.timeout_s, self.poll_s = client, server, timeout_s, poll_s

    def copy(
        self,
        source: GlobusCollection,
        source_rel: str,
        dest: GlobusCollection,
        dest_rel: str,
        label: str,
    ) -> str:
        import globus_sdk

        data = globus_sdk.TransferData(
            source_endpoint=source.collection,
            destination_endpoint=dest.collection,
            label=label[:128],
            sync_level="checksum",
            verify_checksum=True,
        )
        data.add_item(_join(source.path, source_rel), _join(dest.path, dest_rel))
        task_id = str(self.client.submit_transfer(data)["task_id"])
        deadline = time.time() + self.timeout_s
        while not self.client.task_wait(
            task_id,
            timeout=max(1, int(min(60, deadline - time.time()))),
            polling_interval=self.poll_s,
        ):
            if time.time() >= deadline:
                raise TransferFailed(
                    f"Globus Transfer {task_id} ({label}) not done after {self.timeout_s:.0f} s"
                )
        status = self.client.get_task(task_id)["status"]
        if status != "SUCCEEDED":
            raise TransferFailed(f"Globus Transfer {task_id} ({label}) ended {status}")
        return task_id

    def send(self, site: GlobusCollection, rel: str, label: str) -> str:
        return self.copy(self.server, rel, site, rel, label)

    def fetch(self, site: GlobusCollection, rel: str, label: str) -> str:
        return self.copy(site, rel, self.server, rel, label)


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel.lstrip("/")


def read_confined(root: Path, rel: str, limit: int, what: str) -> bytes:
    """The bytes of ``root/rel``: each name below ``root`` opened without following a link,
    the last one without blocking, read only when it is a regular file of at most ``limit``
    bytes. ``ResultRefused`` (naming ``what``) otherwise; FileNotFoundError when it is not
    there."""
    *dirs, name = rel.split("/")
    assert name and not {".", "..", ""} & {*dirs, name}, rel  # the server's own names
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)  # the user's, links and all
    try:
        for part in dirs:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        inner = os.open(name, flags | os.O_NONBLOCK, dir_fd=fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        reasons: dict[int | None, str | None] = {
            errno.ELOOP: "is a symbolic link",
            errno.ENOTDIR: "leaves its directory (a symbolic link, or not a directory)",
        }
        why = reasons.get(exc.errno, exc.strerror)
        raise ResultRefused(f"{what}: {rel} {why}; refused unread") from None
    finally:
        os.close(fd)
    with os.fdopen(inner, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            raise ResultRefused(f"{what}: {rel} is {kind}; refused unread")
        data = f.read(st.st_size + 1) if st.st_size <= limit else b""
    if st.st_size > limit or len(data) > limit:
        raise ResultRefused(
            f"{what}: {rel} holds over {limit} bytes, more than its layout takes; refused"
        )
    return data


def transfer_client_from_env() -> Any:
    """A TransferClient with the confidential client's credentials
    (GLOBUS_COMPUTE_CLIENT_ID / GLOBUS_COMPUTE_CLIENT_SECRET, as for the Compute SDK)."""
    import os

    import globus_sdk

    cid, secret = (
        os.environ.get("GLOBUS_COMPUTE_CLIENT_ID"),
        os.environ.get("GLOBUS_COMPUTE_CLIENT_SECRET"),
    )
    if not cid or not secret:
        raise UserError(
            "globus_transfer needs client credentials",
            field="transport.mode",
            fix="export GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET",
        )
    app = globus_sdk.ClientApp("crossfl", client_id=cid, client_secret=secret)
    return globus_sdk.TransferClient(app=app)


def on_the_wire(task: SiteTask, **changes: Any) -> dict[str, Any]:
    """``task`` with ``changes``, checked against the contract, as plain data."""
    return type(task).model_validate({**task.model_dump(), **changes}).to_wire()


class Transport:
    def __init__(
        self,
        plan: RunPlan,
        run_dir: Path,
        transfer_client: Callable[[], Any] = transfer_client_from_env,
        fns: TaskFns = TaskFns(),
    ) -> None:
        self.plan, self.exp, self.run_dir, self.fns = plan, plan.experiment, run_dir, fns
        self._client_factory = transfer_client
        self._mover: GlobusMover | None = None
        self._sent: dict[tuple[str, str], str] = {}  # (site, file) already at the site
        self.expected_result_bytes = 0  # set by the driver once an adapter came back
        # the most an adapter of the run's layout takes (set by the driver from the base
        # adapter): a result by reference larger than this is refused unread
        self.max_adapter_bytes = 1 << 40

    # -- choosing ----------------------------------------------------------------------------
    def shared_dir(self, entry: SiteEntry) -> Path | None:
        site = self.plan.sites[entry.name]
        if site.shared_dir:
            return Path(site.shared_dir) / self.run_dir.name
        if site.runs_here:
            return self.run_dir / "transport"
        return None

    def mode_for(self, name: str, nbytes: int | None) -> str:
        """The mode for a payload of ``nbytes`` (None: not known yet, e.g. the first result)."""
        entry = self.exp.site_entry(name)
        mode = self.exp.transport_mode(entry)
        if mode != "auto":
            if mode == "shared_fs" and self.shared_dir(entry) is None:
                raise UserError(
                    f"site {name} uses shared_fs but has no shared directory",
                    field=f"sites[{name}].transport.shared_dir",
                    fix="set it, or use mode auto",
                )
            return mode
        if nbytes is not None and nbytes <= self.exp.inline_limit_bytes(entry):
            return "inline"
        if self.shared_dir(entry) is not None:
            return "shared_fs"
        if entry.transport.globus is not None and self.exp.transport.globus is not None:
            return "globus_transfer"
        if nbytes is None:
            return "inline"  # no route by reference: hope the result fits
        raise UserError(
            f"the adapter ({nbytes / 1e6:.1f} MB) is over site {name}'s inline limit and the "
            f"site has no shared directory or Globus collection",
            field=f"sites[{name}].transport",
            fix="set transport.shared_dir, or transport.globus here and at the top level, "
            "or use adapter_dtype bfloat16",
        )

    def mover(self) -> GlobusMover:
        if self._mover is None:
            assert self.exp.transport.globus is not None  # checked by the schema
            self._mover = GlobusMover(
                self._client_factory(),
                self.exp.transport.globus,
                self.exp.transport.transfer_timeout_s,
            )
        return self._mover

    # -- outgoing ----------------------------------------------------------------------------
    def _site_path(self, entry: SiteEntry, mode: str, rel: str) -> str:
        if mode == "globus_transfer":
            assert entry.transport.globus is not None
            g = entry.transport.globus
            return _join(g.local_path or g.path, f"{self.run_dir.name}/{rel}")
        shared = self.shared_dir(entry)
        assert shared is not None
        return str(shared / rel)

    def _server_root(self, entry: SiteEntry, mode: str) -> Path:
        """The site's transport directory as the server sees it (its files are below)."""
        if mode == "globus_transfer":
            g = self.exp.transport.globus
            assert g is not None
            return Path(g.local_path or g.path) / self.run_dir.name
        shared = self.shared_dir(entry)
        assert shared is not None
        return shared

    def _server_file(self, entry: SiteEntry, mode: str, rel: str) -> Path:
        return self._server_root(entry, mode) / rel

    def _place(self, entry: SiteEntry, mode: str, adapter: bytes, rel: str) -> str:
        """Put the adapter where the site reads it (once per site and file); its site path."""
        key = (entry.name, rel)
        if key not in self._sent:
            atomic_write_bytes(self._server_file(entry, mode, rel), adapter)
            if mode == "globus_transfer":
                assert entry.transport.globus is not None
                self.mover().send(
                    entry.transport.globus,
                    f"{self.run_dir.name}/{rel}",
                    f"crossfl {self.run_dir.name} {rel} to {entry.name}",
                )
            self._sent[key] = self._site_path(entry, mode, rel)
        return self._sent[key]

    def train(self, name: str, task: TrainTask, adapter: bytes | None, version: int) -> Outgoing:
        if self.plan.sites[name].mpi:
            return self._mpi(name, "train_round", task, adapter, version, distributed=True)
        entry = self.exp.site_entry(name)
        size = len(adapter) if adapter else 0
        # the result has the global adapter's layout; before the first one its size is unknown
        expected = max(size, self.expected_result_bytes) or None
        mode = self.mode_for(name, expected)
        if mode == "inline":
            return Outgoing(self.fns.train, on_the_wire(task, adapter=adapter), mode, size)
        result_rel = f"results/{name}-{uuid.uuid4().hex[:12]}.safetensors"
        adapter_path = (
            self._place(entry, mode, adapter, f"global-v{version}.safetensors") if adapter else None
        )
        payload = on_the_wire(
            task,
            adapter_path=adapter_path,
            result_path=self._site_path(entry, mode, result_rel),
            inline_limit_bytes=self.exp.inline_limit_bytes(entry),
        )
        return Outgoing(self.fns.train, payload, mode, size, result_rel)

    def evaluate(self, name: str, task: EvalTask, adapter: bytes | None, version: int) -> Outgoing:
        if self.plan.sites[name].mpi:
            return self._mpi(name, "evaluate", task, adapter, version, distributed=False)
        size = len(adapter) if adapter else 0
        mode = self.mode_for(name, size)
        if mode == "inline" or adapter is None:
            return Outgoing(self.fns.evaluate, on_the_wire(task, adapter=adapter), "inline", size)
        entry = self.exp.site_entry(name)
        adapter_path = self._place(entry, mode, adapter, f"global-v{version}.safetensors")
        return Outgoing(self.fns.evaluate, on_the_wire(task, adapter_path=adapter_path), mode, size)

    # -- MPI sites: the task as a file, the result read back -----------------------------------
    def by_reference(self, name: str) -> str:
        """How files reach an MPI site (the plan checked it has a way)."""
        entry = self.exp.site_entry(name)
        mode = self.exp.transport_mode(entry)
        if mode in ("shared_fs", "globus_transfer"):
            return mode
        return "shared_fs" if self.shared_dir(entry) is not None else "globus_transfer"

    def _mpi(
        self,
        name: str,
        task_name: str,
        task: SiteTask,
        adapter: bytes | None,
        version: int,
        *,
        distributed: bool,
    ) -> Outgoing:
        """A training task's ranks (``distributed``) or an evaluation's one rank, started by the
        site's MPI engine; the task file, global adapter and result by reference."""
        entry, site = self.exp.site_entry(name), self.plan.sites[name]
        mode = self.by_reference(name)
        key = f"{name}-{uuid.uuid4().hex[:12]}"
        changes: dict[str, Any] = {"adapter": None}
        if adapter:
            changes["adapter_path"] = self._place(
                entry, mode, adapter, f"global-v{version}.safetensors"
            )
        result_rel = None
        if isinstance(task, TrainTask):  # rank 0 writes the adapter as a file, whatever its size
            result_rel = f"results/{key}.safetensors"
            changes.update(
                result_path=self._site_path(entry, mode, result_rel), inline_limit_bytes=0
            )
        text = task_file_text(task_name, on_the_wire(task, **changes))
        # the task key: the task file's path at the site (its result: results/<key>.out.json)
        task_path = self._place(entry, mode, text.encode(), f"tasks/{key}.json")
        out_rel = f"results/{key}.out.json"
        nodes, ranks = (site.nodes, int(site.ranks_per_node)) if distributed else (1, 1)
        fn = kit_functions(site.catalog)["train" if distributed else "evaluate"].fn
        payload = MpiTask(
            task_path,
            resource_specification(site.catalog, nodes, ranks),
            lambda shell: result_of(shell, lambda: self._read_back(entry, mode, out_rel)),
        )
        return Outgoing(fn, payload, mode, len(adapter) if adapter else 0, result_rel)

    def _fetch(self, entry: SiteEntry, mode: str, rel: str) -> None:
        """Bring a file the site wrote to the server's side (Globus Transfer; a shared
        directory is both)."""
        if mode == "globus_transfer":
            assert entry.transport.globus is not None
            self.mover().fetch(
                entry.transport.globus,
                f"{self.run_dir.name}/{rel}",
                f"crossfl {self.run_dir.name} {rel} from {entry.name}",
            )

    def _read_back(self, entry: SiteEntry, mode: str, rel: str) -> dict[str, Any] | None:
        """A JSON file the site wrote by reference (fetched first with Globus Transfer)."""
        self._fetch(entry, mode, rel)
        what = f"site {entry.name}'s result file"
        try:
            text = read_confined(self._server_root(entry, mode), rel, MAX_OUT_BYTES, what)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ResultRefused(f"{what}: {rel} is not JSON") from None
        return data if isinstance(data, dict) else None

    # -- incoming ----------------------------------------------------------------------------
    def receive(self, name: str, result: TrainResult, out: Outgoing) -> Incoming:
        """The result's adapter: inline, or read from the one file the task named (fetched
        first with Globus Transfer), within the size the run's layout allows."""
        limit = self.max_adapter_bytes
        if result.adapter is not None:
            if len(result.adapter) > limit:
                raise ResultRefused(
                    f"site {name} sent {len(result.adapter)} adapter bytes, over the "
                    f"{limit} its layout takes"
                )
            return Incoming(result.adapter, "inline", len(result.adapter), 0.0)
        entry = self.exp.site_entry(name)
        rel = out.result_rel
        expected = self._site_path(entry, out.mode, rel) if rel else None
        if result.adapter_path != expected:
            raise ResultRefused(
                f"site {name} named {short_repr(result.adapter_path)} for its adapter, "
                f"not the result file its task gave ({expected or 'none: inline'})"
            )
        assert rel is not None
        t0 = time.perf_counter()
        self._fetch(entry, out.mode, rel)
        try:
            data = read_confined(
                self._server_root(entry, out.mode), rel, limit, f"site {name}'s adapter"
            )
        except FileNotFoundError:
            raise ResultRefused(f"site {name}'s adapter: {rel} is not there") from None
        return Incoming(data, out.mode, len(data), time.perf_counter() - t0)
