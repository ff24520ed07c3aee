"""What the synchronous and the asynchronous driver share: the global adapter, task payloads,
submission with retries, result screening, evaluation, checkpoints and the final adapter."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from crossfl.client.adapter_io import adapter_from_bytes, adapter_to_bytes
from crossfl.endpoints import failure_summary
from crossfl.server import checkpoint as ckpt
from crossfl.server.experiment import Experiment, local_path
from crossfl.server.faults import Parking, RetryingTask, RetryPolicy, call_with_retry
from crossfl.server.flat import FlatSpec
from crossfl.server.screening import DistanceScreen, distance, finite_problem, layout_problem
from crossfl.server.site_executors import OpenSite
from crossfl.server.strategies import get_strategy
from crossfl.server.strategies.base import ClientPlan, Update
from crossfl.server.telemetry import MetricsLog
from crossfl.server.transport import Outgoing, Transport


class RunFailed(Exception):
    """The run cannot continue (e.g. no site returned an update); its directory stays."""


class RunStopped(Exception):
    """The run stopped on request after a checkpoint (``stop_after``); resume continues it."""


@dataclass
class RunState:
    run_dir: Path
    experiment: Experiment
    started: float = field(default_factory=time.time)
    version: int = 0
    round: int = 0  # completed rounds (sync) or aggregations (async)
    updates: int = 0  # accepted client updates
    spec: FlatSpec | None = None
    global_flat: Any = None  # torch.Tensor once known

    def elapsed(self) -> float:
        return time.time() - self.started


def model_path_for(experiment: Experiment, site: str | None = None) -> str:
    """The site's own model_path, else model.path; relative paths are this machine's (local
    sites), absolute ones are passed as they are (a facility's filesystem)."""
    own = experiment.site_entry(site).model_path if site is not None else None
    return str(local_path(own or experiment.model.path))


def train_task(experiment: Experiment, data_path: str, adapter: bytes | None, plan: ClientPlan,
               rnd: int, site: str | None = None) -> dict[str, Any]:
    t = experiment.training
    o = experiment.site_entry(site).training if site is not None else None
    return {
        "model_path": model_path_for(experiment, site), "data_path": data_path, "adapter": adapter,
        "local_steps": plan.local_steps, "batch_size": (o and o.batch_size) or t.batch_size, "lr": plan.lr,
        "max_length": t.max_length, "lora": experiment.lora.model_dump(), "dtype": experiment.model.dtype,
        "adapter_dtype": t.adapter_dtype, "seed": experiment.seed, "round": rnd,
        "torch_threads": t.torch_threads, "max_samples": (o and o.max_samples) or t.max_samples,
    }


def eval_task(experiment: Experiment, adapter: bytes | None) -> dict[str, Any]:
    e = experiment.evaluation
    return {
        "model_path": model_path_for(experiment, experiment.eval_site),
        "data_path": str(local_path(experiment.data.validation)),
        "adapter": adapter, "lora": experiment.lora.model_dump(), "batch_size": e.batch_size,
        "max_length": experiment.training.max_length, "dtype": experiment.model.dtype,
        "max_samples": e.max_samples, "generate_max_new_tokens": e.generate_max_new_tokens,
        "torch_threads": experiment.training.torch_threads,
    }


@dataclass
class Pending:
    """One submitted training task."""

    site: str
    rnd: int
    plan: ClientPlan
    out: Outgoing
    task: RetryingTask
    base_version: int
    timeout_s: float

    @property
    def expires_at(self) -> float:
        return self.task.last_submitted_at + self.timeout_s


@dataclass
class Arrival:
    """A finished task: its record (not yet written) and, when usable, its update."""

    record: dict[str, Any]
    update: Update | None
    distance: float | None = None


def task_record(p: Pending, received: float, started: float, result: dict[str, Any] | None,
                error: str | None) -> dict[str, Any]:
    submitted = p.task.submitted_at
    record: dict[str, Any] = {
        "kind": "task", "round": p.rnd, "site": p.site, "submitted_at": submitted, "received_at": received,
        "submitted_rel_s": submitted - started, "bytes_down": p.out.bytes_down, "transport": p.out.mode,
        "attempts": len(p.task.attempts), "base_version": p.base_version, "local_steps": p.plan.local_steps,
        "status": "ok" if error is None else "failed"}
    retried = [a.error for a in p.task.attempts[:-1] if a.error]
    if retried:
        record["retried_errors"] = retried
    if error is not None:
        record["error"] = error
        return record
    assert result is not None
    timings = result.get("timings", {})
    load_s, train_s, ser_s = (float(timings.get(k, 0.0)) for k in ("load_s", "train_s", "serialize_s"))
    ref_s = float(timings.get("fetch_s", 0.0)) + float(timings.get("store_s", 0.0))
    last_submit = p.task.last_submitted_at
    record.update({
        "train_loss": result["train_loss"], "first_loss": result.get("first_loss"),
        "num_samples": result["num_samples"], "steps": result.get("steps"),
        "load_s": load_s, "train_s": train_s, "serialize_s": ser_s,
        # queue/start: (last) submit -> the function began on a worker (queue wait + worker start)
        "queue_s": max(0.0, result["started_at"] - last_submit),
        "worker_s": max(0.0, result["finished_at"] - result["started_at"]),
        # transfer: the worker finished -> the server holds the unpacked result
        "transfer_s": max(0.0, received - result["finished_at"]) + ser_s + ref_s,
        "task_wall_s": received - last_submit,
        "cache_hit": result.get("cache_hit"), "device": result.get("device"), "host": result.get("host"),
        "pid": result.get("pid"), "python": result.get("python"),
    })
    return record


class DriverBase:
    def __init__(self, experiment: Experiment, run_dir: Path, handles: dict[str, OpenSite],
                 data_paths: dict[str, str], console: Console, transport: Transport | None = None,
                 stop_after: int | None = None) -> None:
        self.exp = experiment
        self.handles = handles
        self.data_paths = data_paths
        self.console = console
        self.state = RunState(run_dir, experiment)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.strategy = get_strategy(experiment.strategy.name, **experiment.strategy.kwargs)
        self.eval_site = handles[experiment.eval_site]
        local = {n for n, h in handles.items() if h.kind == "local engine"}
        self.transport = transport or Transport(experiment, run_dir, local)
        f = experiment.faults
        self.policy = RetryPolicy(f.retries, f.backoff_s, f.backoff_max_s)
        self.parking = Parking(f.park_after, f.park_rounds)
        uc = experiment.update_checks
        self.screen = DistanceScreen(uc.max_distance_factor, uc.min_updates_for_distance)
        self.stop_after = stop_after
        self.resumed = False
        self._bytes: tuple[int, bytes | None] = (-1, None)
        self.bytes_moved = 0  # adapter bytes to and from sites by this process, for the console

    # -- adapters ---------------------------------------------------------------------------
    def global_bytes(self) -> bytes | None:
        s = self.state
        if s.global_flat is None or s.spec is None:
            return None
        if self._bytes[0] != s.version:
            self._bytes = (s.version, adapter_to_bytes(s.spec.unflatten(s.global_flat),
                                                       self.exp.training.adapter_dtype))
        return self._bytes[1]

    def initial_global(self) -> torch.Tensor:
        """Global version 0: the seeded fresh adapter every site started from."""
        from crossfl.client.train import fresh_adapter_from_shapes

        spec = self.state.spec
        assert spec is not None
        shapes = {k: tuple(shape) for k, shape in zip(spec.keys, spec.shapes)}
        return spec.flatten(fresh_adapter_from_shapes(shapes, self.exp.seed))

    # -- tasks ------------------------------------------------------------------------------
    def plan_for(self, site: str) -> ClientPlan:
        t, o = self.exp.training, self.exp.site_entry(site).training
        default = ClientPlan(local_steps=o.local_steps or t.local_steps, lr=o.lr or t.lr)
        return self.strategy.configure(site, self.state.version, default)

    def submit_train(self, site: str, rnd: int) -> Pending:
        plan = self.plan_for(site)
        adapter = self.global_bytes()
        task = train_task(self.exp, self.data_paths[site], None, plan, rnd, site)
        out = call_with_retry(lambda: self.transport.train(site, task, adapter, self.state.version), self.policy)
        running = RetryingTask(self.handles[site].executor, out.fn, out.payload, self.policy)
        return Pending(site, rnd, plan, out, running, self.state.version, self.exp.task_timeout_s)

    def arrival(self, p: Pending, received: float, timed_out: bool = False) -> Arrival:
        """Turn a finished (or timed-out) task into its record and, if it passes, its update."""
        result, error = None, None
        if timed_out:
            error = f"timed out after {self.exp.task_timeout_s:.0f} s"
            p.task.cancel()
        else:
            try:
                result = p.task.future.result()
            except Exception as exc:  # a failed site is recorded; the run goes on without it
                error = failure_summary(exc)
        record = task_record(p, received, self.state.started, result, error)
        handle = self.handles[p.site]
        # node-hours: the site's nodes x the task's wall time on its worker (a local site counts
        # 1 node); the pilot job's idle time around tasks is not visible from here
        record.update(nodes=handle.nodes, node_hours=handle.nodes * float(record.get("worker_s") or 0.0) / 3600,
                      node_hours_basis="local: task wall x 1 node" if handle.kind == "local engine"
                      else "task wall x nodes_per_block")
        if error is not None:
            return Arrival(record, None)
        assert result is not None
        try:
            incoming = call_with_retry(lambda: self.transport.receive(p.site, result, p.out.mode), self.policy)
        except Exception as exc:  # the result could not be fetched (e.g. its transfer failed)
            record.update(status="failed", error=f"fetching the result: {failure_summary(exc)}")
            return Arrival(record, None)
        try:
            state_dict = adapter_from_bytes(incoming.adapter)
        except Exception as exc:
            return self.reject(record, f"unreadable adapter: {failure_summary(exc)}")
        record.update(bytes_up=incoming.bytes_up, transport_up=incoming.mode)
        if self.state.spec is None:
            self.state.spec = FlatSpec.from_state(state_dict)
        problem = layout_problem(self.state.spec, state_dict)
        if problem:
            return self.reject(record, problem)
        params = self.state.spec.flatten(state_dict)
        problem = finite_problem(params)
        if problem:
            return self.reject(record, problem)
        self.transport.expected_result_bytes = max(self.transport.expected_result_bytes, incoming.bytes_up)
        reference = self.state.global_flat if self.state.global_flat is not None else self.initial_global()
        update = Update(site=p.site, params=params, num_samples=int(result["num_samples"]),
                        base_version=p.base_version,
                        local_steps=int(result.get("steps") or p.plan.local_steps),
                        train_time_s=record["train_s"], queue_wait_s=record["queue_s"])
        return Arrival(record, update, distance(params, reference))

    @staticmethod
    def reject(record: dict[str, Any], reason: str) -> Arrival:
        record.update(status="rejected", reason=reason)
        return Arrival(record, None)

    def screen_distances(self, arrivals: list[Arrival]) -> None:
        """Reject norm outliers among ``arrivals`` (and the recent history) in place."""
        candidates = {i: a for i, a in enumerate(arrivals) if a.update is not None and a.distance is not None}
        far = self.screen.outliers({str(i): a.distance for i, a in candidates.items()})  # type: ignore[misc]
        for i, a in candidates.items():
            if str(i) in far:
                a.record.update(status="rejected", reason=far[str(i)])
                a.update = None
            else:
                assert a.distance is not None
                self.screen.accepted(a.distance)

    def settle(self, a: Arrival, rnd: int) -> None:
        """Write the record; count the outcome for parking."""
        site = a.record["site"]
        if a.distance is not None:
            a.record["distance"] = a.distance
        self.bytes_moved += int(a.record.get("bytes_up") or 0) + int(a.record.get("bytes_down") or 0)
        ok = a.record["status"] == "ok"
        if self.parking.record(site, ok, rnd):
            until = self.parking.parked_until[site]
            a.record["parked_until_round"] = until
            self.console.print(f"  [yellow]site {site} parked after {self.exp.faults.park_after} failures "
                               f"in a row; back in round {until}[/]")
        self.metrics.write(a.record)
        if not ok:
            self.console.print(f"  [red]round {rnd}: site {site} {a.record['status']}:[/] "
                               f"{a.record.get('error') or a.record.get('reason')}")

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, label: str, rnd: int) -> dict[str, Any]:
        adapter = self.global_bytes()
        name = self.exp.eval_site
        out = call_with_retry(lambda: self.transport.evaluate(name, eval_task(self.exp, None), adapter,
                                                              self.state.version), self.policy)
        running = RetryingTask(self.eval_site.executor, out.fn, out.payload, self.policy)
        try:
            result = running.future.result(timeout=self.exp.task_timeout_s)
        except Exception as exc:
            running.cancel()
            raise RunFailed(f"evaluation on site {name} failed: {failure_summary(exc)}") from exc
        record = {"kind": label, "round": rnd, "val_loss": result["val_loss"],
                  "exact_match": result.get("exact_match", {}), "num_samples": result.get("num_samples"),
                  "elapsed_s": self.state.elapsed(), "strategy": self.exp.strategy.name,
                  "version": self.state.version, "updates": self.state.updates, "bytes_down": out.bytes_down,
                  "transport": out.mode, "driver": self.driver_name}
        self.metrics.write(record)
        return record

    driver_name = "sync"

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, finished: bool = False) -> None:
        s = self.state
        c = ckpt.Checkpoint(
            round=s.round, version=s.version, updates=s.updates, elapsed_s=s.elapsed(),
            metrics_bytes=self.metrics.position(), strategy_name=self.exp.strategy.name,
            strategy_state=self.strategy.state_dict(), global_flat=s.global_flat, spec=s.spec,
            parking=self.parking.state_dict(), screen_history=list(self.screen.history),
            rng=ckpt.rng_state(), finished=finished)
        exact = None
        if s.global_flat is not None and s.spec is not None:
            exact = adapter_to_bytes(s.spec.unflatten(s.global_flat), "float32")
        ckpt.save(s.run_dir / "checkpoint", c, exact)

    def restore(self, c: ckpt.Checkpoint) -> None:
        s = self.state
        s.round, s.version, s.updates = c.round, c.version, c.updates
        s.global_flat, s.spec = c.global_flat, c.spec
        s.started = time.time() - c.elapsed_s
        self.strategy.load_state_dict(c.strategy_state)
        self.parking.load_state_dict(c.parking)
        self.screen.history.extend(c.screen_history)
        ckpt.restore_rng(c.rng)
        self.resumed = True
        self.metrics.write({"kind": "resume", "round": c.round, "version": c.version,
                            "metrics_bytes": c.metrics_bytes, "at": time.time(), "elapsed_s": c.elapsed_s})

    def after_checkpoint(self) -> None:
        if self.stop_after is not None and self.state.round >= self.stop_after:
            raise RunStopped(f"stopped after round {self.state.round} as asked; `crossfl resume` continues")

    def save_final(self) -> Path:
        from peft import LoraConfig

        from crossfl.atomic import atomic_write_bytes

        out = self.state.run_dir / "final_adapter"
        adapter = self.global_bytes()
        assert adapter is not None
        # peft's own on-disk layout, so PeftModel.from_pretrained(base, out) loads it.
        atomic_write_bytes(out / "adapter_model.safetensors", adapter)
        lora = self.exp.lora
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                            base_model_name_or_path=self.exp.model.path)
        config.save_pretrained(str(out))
        self.checkpoint(finished=True)
        return out
