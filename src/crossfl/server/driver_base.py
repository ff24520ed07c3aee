"""What the synchronous and the asynchronous driver share: the global adapter, submission with
retries, result screening, evaluation, checkpoints and the final adapter.

A driver is handed a checked ``RunPlan`` and the open sites; it builds every site task from the
plan (the models of ``crossfl.client.contract``), asks the strategy only through the methods of
its base class, and writes the records of ``crossfl.server.records``.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossfl.client.adapter_io import (
    adapter_from_bytes,
    adapter_to_bytes,
    fresh_adapter_from_shapes,
)
from crossfl.client.contract import EvalResult, LoraSpec, TrainResult
from crossfl.client.encoding import load_records
from crossfl.clock import REAL_CLOCK, Clock, bind_strategy_clock
from crossfl.endpoints import failure_summary, refusal
from crossfl.errors import UserError
from crossfl.server import checkpoint as ckpt
from crossfl.server.dispatch import make_policy
from crossfl.server.faults import Parking, RetryingTask, RetryPolicy, call_with_retry
from crossfl.server.flat import FlatSpec
from crossfl.server.plan import RunPlan
from crossfl.server.records import (
    EvalRecord,
    RefusedGlobalRecord,
    ResumeRecord,
    TaskRecord,
    account,
)
from crossfl.server.screening import (
    DistanceScreen,
    SampleBounds,
    adapter_size_bound,
    base_layout,
    distance,
    finite_problem,
    layout_problem,
    norm,
)
from crossfl.server.site_executors import OpenSite
from crossfl.server.strategies import get_strategy
from crossfl.server.strategies.base import ClientPlan, Strategy, Update
from crossfl.server.telemetry import MetricsLog, live_records, of_kind
from crossfl.server.transport import Outgoing, Transport


class RunFailed(Exception):
    """The run cannot continue (e.g. no site returned an update); its directory stays."""


class RunStopped(Exception):
    """The run stopped on request after a checkpoint (``stop_after``); resume continues it."""


@dataclass
class RunState:
    run_dir: Path
    clock: Clock = REAL_CLOCK  # wall time, or a replay's virtual time
    started: float = field(default_factory=time.time)
    version: int = 0
    round: int = 0  # completed rounds (sync) or aggregations (async)
    updates: int = 0  # accepted client updates
    spec: FlatSpec | None = None
    global_flat: torch.Tensor | None = None

    def elapsed(self) -> float:
        return self.clock.now() - self.started


def peft_adapter_config(lora: LoraSpec, base_model: str) -> dict[str, Any]:
    """peft's adapter_config.json for an adapter trained with ``lora`` (as data: the server
    never imports peft; the LoRA keys are ``LoraSpec.peft_options``, what the sites built)."""
    return {
        "peft_type": "LORA",
        "peft_version": importlib.metadata.version("peft"),
        "base_model_name_or_path": base_model,
        **lora.peft_options(),
        "inference_mode": False,
    }


@dataclass
class RunOutcome:
    """What a run ends with: its first (untrained) and its last evaluation."""

    baseline: EvalRecord
    final: EvalRecord


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

    record: TaskRecord
    update: Update | None
    distance: float | None = None


def task_record(
    p: Pending, received: float, started: float, result: TrainResult | None, error: str | None
) -> TaskRecord:
    submitted = p.task.submitted_at
    record = TaskRecord(
        round=p.rnd,
        site=p.site,
        status="ok" if error is None else "failed",
        submitted_at=submitted,
        received_at=received,
        submitted_rel_s=submitted - started,
        bytes_down=p.out.bytes_down,
        transport=p.out.mode,
        attempts=len(p.task.attempts),
        base_version=p.base_version,
        local_steps=p.plan.local_steps,
        error=error,
        retried_errors=[a.error for a in p.task.attempts[:-1] if a.error] or None,
    )
    if result is None:
        return record
    t = result.timings
    last_submit = p.task.last_submitted_at
    return record.model_copy(
        update=dict(
            train_loss=result.train_loss,
            first_loss=result.first_loss,
            num_samples=result.num_samples,
            steps=result.steps,
            load_s=t.load_s,
            train_s=t.train_s,
            serialize_s=t.serialize_s,
            queue_s=max(0.0, result.started_at - last_submit),
            worker_s=max(0.0, result.finished_at - result.started_at),
            transfer_s=max(0.0, received - result.finished_at)
            + t.serialize_s
            + t.fetch_s
            + t.store_s,
            task_wall_s=received - last_submit,
            cache_hit=result.cache_hit,
            device=result.device,
            host=result.host,
            pid=result.pid,
            python=result.python,
            simulated=result.simulated,
        )
    )


class DriverBase(ABC):
    name: ClassVar[str]

    def __init__(
        self,
        plan: RunPlan,
        run_dir: Path,
        handles: dict[str, OpenSite],
        data_paths: dict[str, str],
        console: Console,
        transport: Transport,
        stop_after: int | None = None,
        *,
        clock: Clock = REAL_CLOCK,
        eval_site: OpenSite | None = None,
        keep_files: bool = True,
    ) -> None:
        self.plan = plan
        self.clock = clock
        self.exp = plan.experiment
        self.handles = handles
        self.data_paths = data_paths
        self.console = console
        self.state = RunState(run_dir, clock, clock.now())
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.samples = SampleBounds(self.sample_counts())
        self.strategy = self.new_strategy()
        self.eval_site = eval_site or handles[self.exp.eval_site]
        self.keep_files = keep_files  # checkpoints and the final adapter (not in comparisons)
        self.dispatch = make_policy(
            self.exp, clock, self.metrics.write, self.strategy, synchronous=plan.driver == "sync"
        )
        self.dispatch.start(handles)
        self.transport = transport
        f = self.exp.faults
        self.policy = RetryPolicy(f.retries, f.backoff_s, f.backoff_max_s)
        self.parking = Parking(f.park_after, f.park_rounds)
        uc = self.exp.update_checks
        self.screen = DistanceScreen(
            uc.max_distance_factor, uc.min_updates_for_distance, uc.max_relative_distance
        )
        if plan.model_here is not None:  # the base adapter's layout: what every update matches
            self.learn_layout(
                base_layout(plan.model_here, plan.lora, self.exp.training.adapter_dtype)
            )
        self.stop_after = stop_after
        self.resumed = False
        self._bytes: tuple[int, bytes | None] = (-1, None)
        self.bytes_moved = 0  # adapter bytes to and from sites by this process, for the console

    def sample_counts(self) -> dict[str, int]:
        """Every site's training-set size as its client will count it (its records, capped
        by ``max_samples``), as far as the server knows it: read here for data on this machine
        (a site that runs here, or a partition of data.train the server wrote), else the size
        the site's entry declares (``num_samples``), else 0 (unknown)."""
        counts: dict[str, int] = {}
        for entry in self.exp.sites:
            path = Path(self.data_paths.get(entry.name, ""))
            cap = entry.training.max_samples or self.exp.training.max_samples
            site = self.plan.sites.get(entry.name)
            here = site is not None and (site.runs_here or site.data_path is None)
            try:
                counts[entry.name] = (
                    len(load_records(str(path), cap)) if here and path.is_file() else 0
                )
            except UserError:  # the site's own task reports it, with the site's name
                counts[entry.name] = 0
            if not counts[entry.name] and entry.num_samples:
                counts[entry.name] = min(entry.num_samples, cap or entry.num_samples)
        return counts

    def new_strategy(self) -> Strategy:
        """The experiment's strategy, fresh: its clock, every site's known size, the layout."""
        strategy = get_strategy(self.exp.strategy.name, **self.exp.strategy.kwargs)
        bind_strategy_clock(strategy, self.clock)
        strategy.register_sites(self.samples.counts)
        if self.state.spec is not None:
            strategy.set_layout(self.state.spec)
        return strategy

    @abstractmethod
    def run(self) -> RunOutcome:
        """Drive the run to its end (or to ``stop_after``: RunStopped)."""

    def progress(self) -> Progress:
        """The live progress bars; transient, so nothing is left of them when the run ends."""
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    # -- adapters ---------------------------------------------------------------------------
    def global_bytes(self) -> bytes | None:
        s = self.state
        if s.global_flat is None or s.spec is None:
            return None
        if self._bytes[0] != s.version:
            self._bytes = (
                s.version,
                adapter_to_bytes(s.spec.unflatten(s.global_flat), self.exp.training.adapter_dtype),
            )
        return self._bytes[1]

    def initial_global(self) -> torch.Tensor:
        """Global version 0: the seeded fresh adapter every site started from."""
        spec = self.state.spec
        assert spec is not None
        shapes = {k: tuple(shape) for k, shape in zip(spec.keys, spec.shapes, strict=False)}
        return spec.flatten(fresh_adapter_from_shapes(shapes, self.exp.seed))

    def learn_layout(self, spec: FlatSpec) -> None:
        """The adapter's tensor layout is known (the base adapter's, or a checkpoint's): keep
        it, tell the strategy, and bound what a result by reference may hold by it."""
        self.state.spec = spec
        self.strategy.set_layout(spec)
        self.transport.max_adapter_bytes = adapter_size_bound(spec)

    # -- tasks ------------------------------------------------------------------------------
    def submit_train(self, site: str, rnd: int) -> Pending:
        plan = self.dispatch.plan(site, self.state.version, self.plan.client_plan(site))
        adapter = self.global_bytes()
        task = self.plan.train_task(site, self.data_paths[site], plan, rnd)
        out = call_with_retry(
            lambda: self.transport.train(site, task, adapter, self.state.version),
            self.policy,
            clock=self.clock,
        )
        running = RetryingTask(
            self.handles[site].executor, out.fn, out.payload, self.policy, clock=self.clock
        )
        return Pending(site, rnd, plan, out, running, self.state.version, self.exp.task_timeout_s)

    def arrival(self, p: Pending, received: float, timed_out: bool = False) -> Arrival:
        """Turn a finished (or timed-out) task into its record and, if it passes, its update."""
        result, error, refused = None, None, None
        if timed_out:
            error = f"timed out after {self.exp.task_timeout_s:.0f} s"
            p.task.cancel()
        else:
            try:
                result = TrainResult.from_wire(p.task.future.result())
            except UserError as exc:  # the site answered, but not with a TrainResult
                refused = f"malformed result: {exc}"
            except Exception as exc:  # a failed site is recorded; the run goes on without it
                why = refusal(exc)  # what it sent is not data: refused unread
                refused, error = (str(why), None) if why else (None, failure_summary(exc))
        record = task_record(p, received, self.state.started, result, error)
        if refused is not None:  # nothing of it is used; the dispatch still sees the site free
            self.reject(record, refused)
        site = self.handles[p.site].site
        account(
            record,
            result,
            held_nodes=site.held_nodes,
            devices_per_node=site.catalog.devices_per_node(),
            local=site.runs_here,
        )
        self.dispatch.observe(record)
        if result is None:
            return Arrival(record, None)
        try:
            incoming = call_with_retry(
                lambda: self.transport.receive(p.site, result, p.out),
                self.policy,
                clock=self.clock,
            )
        except Exception as exc:  # the result could not be fetched (e.g. its transfer failed)
            why = refusal(exc)
            if why is not None:
                return self.reject(record, str(why))
            record.status, record.error = "failed", f"fetching the result: {failure_summary(exc)}"
            return Arrival(record, None)
        try:
            state_dict = adapter_from_bytes(incoming.adapter)
        except Exception as exc:
            return self.reject(record, f"unreadable adapter: {failure_summary(exc)}")
        record.bytes_up, record.transport_up = incoming.bytes_up, incoming.mode
        if self.state.spec is None:  # a plan built without its checks (tests): no base layout
            self.learn_layout(FlatSpec.from_state(state_dict))
        assert self.state.spec is not None
        problem = layout_problem(self.state.spec, state_dict)
        if problem:
            return self.reject(record, problem)
        params = self.state.spec.flatten(state_dict)
        problem = finite_problem(params)
        if problem:
            return self.reject(record, problem)
        reference = (
            self.state.global_flat if self.state.global_flat is not None else self.initial_global()
        )
        d = distance(params, reference)
        problem = self.screen.too_far(d, norm(reference))
        if problem:
            record.distance = d
            return self.reject(record, problem)
        self.transport.expected_result_bytes = max(
            self.transport.expected_result_bytes, incoming.bytes_up
        )
        counted = self.samples.counted(p.site, result.num_samples)
        if counted != result.num_samples:
            record.weighed_samples = counted
        update = Update(
            site=p.site,
            params=params,
            num_samples=counted,
            base_version=p.base_version,
            local_steps=result.steps or p.plan.local_steps,
            train_time_s=record.train_s,
            queue_wait_s=record.queue_s,
        )
        # the dispatch's factor (staleness, participation) on top of the bounded sample count
        update.weight = self.dispatch.weight(update, self.state.version)
        return Arrival(record, update, d)

    @staticmethod
    def reject(record: TaskRecord, reason: str) -> Arrival:
        """Drop the update; the reason (what a site sent shapes it: one line, bounded) is
        recorded."""
        record.status, record.reason = "rejected", " ".join(reason.split())[:500]
        return Arrival(record, None)

    def accept_global(self, new: torch.Tensor, rnd: int, sites: list[str]) -> bool:
        """Whether ``new`` may replace the last good global. If not, the refusal is recorded
        and the strategy goes back to its state at the last checkpoint (a fresh one before the
        first), so the aggregation leaves nothing behind."""
        s = self.state
        assert s.global_flat is not None
        problem = self.screen.global_problem(new, s.global_flat)
        if problem is None:
            return True
        self.metrics.write(
            RefusedGlobalRecord(
                round=rnd,
                version=s.version,
                sites=sites,
                reason=f"new global refused: {problem}",
                elapsed_s=s.elapsed(),
            )
        )
        self.console.print(
            f"  [red]round {rnd}: the new global is refused ({problem}); "
            f"version {s.version} stays[/]"
        )
        saved = ckpt.load(s.run_dir / "checkpoint") if self.keep_files else None
        self.strategy = self.new_strategy()
        if saved is not None:
            self.strategy.load_state_dict(saved.strategy_state)
            bind_strategy_clock(self.strategy, self.clock)
        self.dispatch.strategy = self.strategy  # the dispatch plans with the same one
        return False

    def screen_distances(self, arrivals: list[Arrival]) -> None:
        """Reject norm outliers among ``arrivals`` (and the recent history) in place."""
        candidates = {
            i: a for i, a in enumerate(arrivals) if a.update is not None and a.distance is not None
        }
        far = self.screen.outliers({str(i): a.distance for i, a in candidates.items()})  # type: ignore[misc]
        for i, a in candidates.items():
            if str(i) in far:
                a.record.status, a.record.reason = "rejected", far[str(i)]
                a.update = None
            else:
                assert a.distance is not None
                self.screen.accepted(a.distance)

    def settle(self, a: Arrival, rnd: int) -> None:
        """Write the record; count the outcome for parking."""
        record = a.record
        if a.distance is not None:
            record.distance = a.distance
        self.bytes_moved += (record.bytes_up or 0) + record.bytes_down
        ok = record.status == "ok"
        if self.parking.record(record.site, ok, rnd):
            until = self.parking.parked_until[record.site]
            record.parked_until_round = until
            self.console.print(
                f"  [yellow]site {record.site} parked after {self.exp.faults.park_after} "
                f"failures in a row; back in round {until}[/]"
            )
        self.metrics.write(record)
        if not ok:
            self.console.print(
                f"  [red]round {rnd}: site {record.site} {record.status}:[/] "
                f"{record.error or record.reason}"
            )

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, label: Literal["baseline", "round"], rnd: int) -> EvalRecord:
        started = self.state.elapsed()
        adapter = self.global_bytes()
        name = self.exp.eval_site
        out = call_with_retry(
            lambda: self.transport.evaluate(
                name, self.plan.eval_task(), adapter, self.state.version
            ),
            self.policy,
            clock=self.clock,
        )
        running = RetryingTask(
            self.eval_site.executor, out.fn, out.payload, self.policy, clock=self.clock
        )
        try:
            result = EvalResult.from_wire(
                self.clock.result(running.future, timeout=self.exp.task_timeout_s)
            )
        except Exception as exc:
            running.cancel()
            raise RunFailed(f"evaluation on site {name} failed: {failure_summary(exc)}") from exc
        record = EvalRecord(
            kind=label,
            round=rnd,
            val_loss=result.val_loss,
            answer_tokens=result.answer_tokens,
            exact_match=result.exact_match,
            num_samples=result.num_samples,
            started_s=started,
            elapsed_s=self.state.elapsed(),
            strategy=self.exp.strategy.name,
            version=self.state.version,
            updates=self.state.updates,
            bytes_down=out.bytes_down,
            transport=out.mode,
            driver=self.name,
        )
        self.metrics.write(record)
        return record

    def reached_target(self, record: EvalRecord | None) -> bool:
        """The run's stop_at_loss is met by this evaluation."""
        target = self.exp.stop_at_loss
        return target is not None and record is not None and record.val_loss <= target

    def baseline(self) -> EvalRecord:
        """The untrained adapter's evaluation: the one a resumed run already has, or a new one."""
        if self.resumed:
            kept = [
                r
                for r in of_kind(live_records(self.metrics.path), EvalRecord)
                if r.kind == "baseline"
            ]
            if kept:
                return kept[0]
        base = self.evaluate("baseline", 0)
        self.console.print(f"untrained adapter: {base.headline()}")
        return base

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, finished: bool = False) -> None:
        if not self.keep_files:
            return
        s = self.state
        c = ckpt.Checkpoint(
            round=s.round,
            version=s.version,
            updates=s.updates,
            elapsed_s=s.elapsed(),
            metrics_bytes=self.metrics.position(),
            strategy_name=self.exp.strategy.name,
            strategy_state=self.strategy.state_dict(),
            global_flat=s.global_flat,
            spec=s.spec,
            parking=self.parking.state_dict(),
            screen_history=list(self.screen.history),
            rng=ckpt.rng_state(),
            finished=finished,
        )
        exact = None
        if s.global_flat is not None and s.spec is not None:
            exact = adapter_to_bytes(s.spec.unflatten(s.global_flat), "float32")
        ckpt.save(s.run_dir / "checkpoint", c, exact, keep=self.exp.keep_checkpoints)

    def restore(self, c: ckpt.Checkpoint | None) -> None:
        """Continue from checkpoint ``c`` (None: nothing was aggregated; start over, leaving
        the earlier records aside)."""
        s = self.state
        self.resumed = True
        if c is None:
            self.metrics.write(
                ResumeRecord(round=0, version=0, metrics_bytes=0, at=time.time(), elapsed_s=0.0)
            )
            return
        s.round, s.version, s.updates = c.round, c.version, c.updates
        s.global_flat = c.global_flat
        if c.spec is not None:
            self.learn_layout(c.spec)
        s.started = self.clock.now() - c.elapsed_s
        self.strategy.load_state_dict(c.strategy_state)
        bind_strategy_clock(self.strategy, self.clock)
        self.parking.load_state_dict(c.parking)
        self.screen.history.extend(c.screen_history)
        ckpt.restore_rng(c.rng)
        self.metrics.write(
            ResumeRecord(
                round=c.round,
                version=c.version,
                metrics_bytes=c.metrics_bytes,
                at=time.time(),
                elapsed_s=c.elapsed_s,
            )
        )

    def after_checkpoint(self) -> None:
        if self.stop_after is not None and self.state.round >= self.stop_after:
            raise RunStopped(
                f"stopped after round {self.state.round} as asked; `crossfl resume` continues"
            )

    def save_final(self) -> Path:
        """The final adapter in peft's own on-disk layout (adapter_model.safetensors and
        adapter_config.json), so ``PeftModel.from_pretrained(base, out)`` loads it. The config
        is written as data: the server never imports peft."""
        from crossfl.atomic import atomic_write_bytes, atomic_write_text

        out = self.state.run_dir / "final_adapter"
        if not self.keep_files:
            return out
        adapter = self.global_bytes()
        assert adapter is not None
        atomic_write_bytes(out / "adapter_model.safetensors", adapter)
        config = peft_adapter_config(self.exp.lora, self.exp.model.path)
        atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2) + "\n")
        self.checkpoint(finished=True)
        return out
