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
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossfl.atomic import atomic_write_bytes
from crossfl.client import tasks as client_tasks
from crossfl.client.contract import EvalTask, SiteTask, TrainResult, TrainTask
from crossfl.errors import UserError
from crossfl.functions import kit_functions
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


@dataclass
class Outgoing:
    fn: Callable[..., Any]
    payload: Any  # the task on the wire (an MPI site: an MpiTask)
    mode: str
    bytes_down: int


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

    def _server_file(self, entry: SiteEntry, mode: str, rel: str) -> Path:
        if mode == "globus_transfer":
            g = self.exp.transport.globus
            assert g is not None
            return Path(g.local_path or g.path) / self.run_dir.name / rel
        return Path(self._site_path(entry, mode, rel))

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
        result_path = self._site_path(
            entry, mode, f"results/{name}-{uuid.uuid4().hex[:12]}.safetensors"
        )
        adapter_path = (
            self._place(entry, mode, adapter, f"global-v{version}.safetensors") if adapter else None
        )
        payload = on_the_wire(
            task,
            adapter_path=adapter_path,
            result_path=result_path,
            inline_limit_bytes=self.exp.inline_limit_bytes(entry),
        )
        return Outgoing(self.fns.train, payload, mode, size)

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
        if isinstance(task, TrainTask):  # rank 0 writes the adapter as a file, whatever its size
            changes.update(
                result_path=self._site_path(entry, mode, f"results/{key}.safetensors"),
                inline_limit_bytes=0,
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
        return Outgoing(fn, payload, mode, len(adapter) if adapter else 0)

    def _read_back(self, entry: SiteEntry, mode: str, rel: str) -> dict[str, Any] | None:
        """A JSON file the site wrote by reference (fetched first with Globus Transfer)."""
        if mode == "globus_transfer":
            assert entry.transport.globus is not None
            self.mover().fetch(
                entry.transport.globus,
                f"{self.run_dir.name}/{rel}",
                f"crossfl {self.run_dir.name} {rel} from {entry.name}",
            )
        path = self._server_file(entry, mode, rel)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None

    # -- incoming ----------------------------------------------------------------------------
    def receive(self, name: str, result: TrainResult, sent_mode: str) -> Incoming:
        if result.adapter is not None:
            return Incoming(result.adapter, "inline", len(result.adapter), 0.0)
        site_path = result.adapter_path
        assert site_path is not None  # the contract: one of the two
        entry = self.exp.site_entry(name)
        t0 = time.perf_counter()
        if sent_mode == "globus_transfer":
            assert entry.transport.globus is not None
            g = entry.transport.globus
            root = _join(g.local_path or g.path, self.run_dir.name)
            rel = (
                str(site_path)[len(root) :].lstrip("/") if str(site_path).startswith(root) else None
            )
            if rel is None:
                raise ValueError(
                    f"site {name} wrote its result outside its transfer directory: {site_path}"
                )
            self.mover().fetch(
                g, f"{self.run_dir.name}/{rel}", f"crossfl {self.run_dir.name} {rel} from {name}"
            )
            local = self._server_file(entry, sent_mode, rel)
        else:
            local = Path(site_path)
        data = local.read_bytes()
        return Incoming(data, sent_mode, len(data), time.perf_counter() - t0)
