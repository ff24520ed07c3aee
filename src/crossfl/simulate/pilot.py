"""One site's pilot jobs in virtual time, as a Globus Compute endpoint runs them.

The endpoint's ``GlobusComputeEngine`` is a Parsl HighThroughputExecutor driven by
Parsl's ``simple`` strategy, polled every ``strategy_period`` (5 s) from the moment
the engine starts (parsl/utils.py ``Timer``: first poll at once). Modelled here:

- *Blocks* are pilot jobs. ``init_blocks`` are submitted at the first poll. At a poll
  where more tasks are outstanding than blocks (pending or running) can hold, blocks
  are submitted up to ``max_blocks`` (parsl/jobs/strategy.py, cases 2 and 4a). Each
  submission waits in the batch queue for a wait drawn from the facility's queue model.
- A block runs one task at a time (a training task uses every accelerator the block
  holds); tasks wait at the endpoint, first come first served, and go to the free block
  with the most walltime left (ASSUMPTION: as if managers drained before their walltime;
  HTEX picks among managers with capacity).
- A task is registered with the web service when it is submitted, and from then on it
  cannot be cancelled: "Tasks cannot be cancelled once they are registered"
  (globus_compute_sdk/sdk/executor.py, ``Executor.shutdown``, SDK 4.x pinned here). A task
  whose future the server cancelled still reaches a worker and holds it for its steps;
  its result is dropped (the real function is not called: nobody reads it).
- A block lives until its walltime, when the batch system kills it; a task still
  running then is lost, and the endpoint reports ``ManagerLost`` once Parsl's
  heartbeat threshold (120 s) has passed, a system failure the kit retries. With a
  preemption rate, a running block can also be killed earlier (exponential time).
- *Idle release*: when no task is outstanding, the strategy starts an idle timer at
  its next poll and, at the first poll after more than ``max_idletime`` (120 s) of
  idleness, cancels every block above ``min_blocks`` (strategy.py case 1b). A task
  that arrives first resets the timer. Parsl never scales out to ``min_blocks`` with
  no task outstanding (case 1a), so ``min_blocks`` only protects blocks from release.
- *Node-hours* are charged for the whole time a block is held, idle included:
  ``nodes x (end - start)``; a block cancelled while still queued costs nothing.
- A fresh worker (a block's first task) loads the base model (``load_cold_s``), a warm
  one pays ``load_warm_s``; training takes ``steps x seconds_per_step``.

``mode: per_task`` is APPFL's queue simulation instead: every task is its own batch job
that waits, runs (cold) and ends.

The task function itself runs for real, in this process, when the task starts on its
virtual worker; only the times are simulated.
"""

from __future__ import annotations

import functools
import math
import random
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from crossfl.client.contract import inline_nbytes
from crossfl.clock import VirtualClock
from crossfl.simulate.cache import CallOutcome
from crossfl.simulate.queues import QueueModel
from crossfl.simulate.scenario import SiteProfile

Runner = Callable[[Callable[..., Any], Any], CallOutcome]


@dataclass
class Block:
    id: int
    submitted_at: float
    wait_s: float
    walltime_s: float
    started_at: float | None = None
    ends_at: float | None = None  # walltime or preemption, known once it starts
    planned_end: str = "walltime"
    ended_at: float | None = None
    end_reason: str | None = None
    task: SimTask | None = None
    tasks_run: int = 0
    draining: bool = False  # past its drain time: takes no new task, ends when idle
    events: list[Any] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.ended_at is None

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.ended_at is None

    @property
    def walltime_end(self) -> float | None:
        """When the batch system will end it (what the scheduler reports; a preemption is
        not known in advance)."""
        return None if self.started_at is None else self.started_at + self.walltime_s


@dataclass
class SimTask:
    future: Future
    fn: Callable[..., Any]
    payload: Any
    submitted_at: float
    bytes_down: int
    started_at: float | None = None
    block: Block | None = None
    outcome: CallOutcome | None = None
    cold: bool = False
    load_s: float = 0.0
    train_s: float = 0.0
    finish_event: Any = None
    abandoned: bool = False  # cancelled by the server: it runs, its result is dropped

    @property
    def finishes_at(self) -> float:
        assert self.started_at is not None
        return self.started_at + self.load_s + self.train_s


def remote_failure(exc: BaseException) -> BaseException:
    """A site function's exception as the SDK raises it: ``TaskExecutionFailed`` with
    the worker's traceback text."""
    from globus_compute_sdk.errors import TaskExecutionFailed

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return TaskExecutionFailed(text)


def manager_lost(site: str, block: Block, reason: str) -> BaseException:
    from globus_compute_sdk.errors import TaskExecutionFailed

    return TaskExecutionFailed(
        "parsl.executors.high_throughput.errors.ManagerLost: Task failure due to loss of "
        f"manager {site}-block{block.id:04d} on host {site}-block{block.id} "
        f"(simulated: the pilot job ended at {reason})"
    )


class SiteSimulator:
    """The endpoint of one site: its blocks, its task queue, its node-hours."""

    def __init__(
        self,
        site: str,
        profile: SiteProfile,
        queue: QueueModel,
        clock: VirtualClock,
        run: Runner,
        *,
        seed: int | str,
        nodes: int,
        walltime_s: float,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.site, self.profile, self.queue, self.clock, self.run = site, profile, queue, clock, run
        self.pilot, self.speed, self.transfer = profile.pilot, profile.speed, profile.transfer
        self.nodes, self.walltime_s = nodes, walltime_s
        self.on_record = on_record
        # One stream per site and purpose: the k-th pilot of a site waits as long under
        # every strategy or policy run with the same seed (paired comparisons).
        self.rng_queue = random.Random(f"crossfl-simulate:{seed}:{site}:queue")
        self.rng_preempt = random.Random(f"crossfl-simulate:{seed}:{site}:preempt")
        self.t0 = clock.now()
        self.blocks: list[Block] = []
        self.waiting: deque[SimTask] = deque()
        self.outstanding = 0  # tasks at the endpoint (waiting, running, or lost not yet reported)
        self.records: list[dict[str, Any]] = []
        self._scale_event: Any = None
        self._release_event: Any = None
        self.drain_s = 0.0  # HTEX drain_period counted back from the walltime (0: none)
        self.closed = False
        if self.pilot.mode == "pilot" and self.pilot.init_blocks:
            clock.call_at(self.t0, lambda: self._submit_blocks(self.pilot.init_blocks))

    # -- the endpoint's side -------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], payload: Any) -> Future:
        if self.closed:
            raise RuntimeError(f"simulated site {self.site} is shut down")
        future: Future = Future()
        adapter = payload.get("adapter") if isinstance(payload, dict) else None
        task = SimTask(future, fn, payload, self.clock.now(), len(adapter or b""))
        self.clock.call_later(
            self.transfer.seconds(self.transfer.down_s, task.bytes_down), lambda: self._arrive(task)
        )
        return future

    def _arrive(self, task: SimTask) -> None:
        if self.closed:
            task.future.cancel()
            return
        self.outstanding += 1
        self.waiting.append(task)
        if self._release_event is not None:  # a task: the idle timer starts over
            self._release_event.cancel()
            self._release_event = None
        if self.pilot.mode == "per_task":
            self._submit_blocks(1)
        self._dispatch()
        self._want_blocks()

    def _active(self) -> list[Block]:
        return [b for b in self.blocks if b.active]

    def next_poll(self, t: float) -> float:
        """The strategy's first poll at or after ``t``."""
        period = self.pilot.strategy_period_s
        if period <= 0:
            return t
        return self.t0 + math.ceil((t - self.t0) / period - 1e-9) * period

    def _want_blocks(self) -> None:
        if self.closed or self.pilot.mode != "pilot" or self._scale_event is not None:
            return
        active = len(self._active())
        if self.outstanding > active and active < self.pilot.max_blocks:
            self._scale_event = self.clock.call_at(
                self.next_poll(self.clock.now()), self._scale_out
            )

    def _scale_out(self) -> None:
        self._scale_event = None
        active = len(self._active())
        self._submit_blocks(min(self.outstanding - active, self.pilot.max_blocks - active))

    def _submit_blocks(self, n: int) -> None:
        for _ in range(max(0, n)):
            wait = self.queue.sample(self.rng_queue, self.nodes, self.walltime_s)
            block = Block(len(self.blocks), self.clock.now(), wait, self.walltime_s)
            self.blocks.append(block)
            block.events.append(
                self.clock.call_later(wait, functools.partial(self._start_block, block))
            )

    def _start_block(self, block: Block) -> None:
        now = self.clock.now()
        block.started_at = now
        block.ends_at = now + block.walltime_s
        rate = self.pilot.preemption_per_hour
        if rate > 0:
            lifetime = self.rng_preempt.expovariate(rate / 3600.0)
            if lifetime < block.walltime_s:
                block.ends_at, block.planned_end = now + lifetime, "preempted"
        block.events.append(
            self.clock.call_at(block.ends_at, lambda: self._end_block(block, block.planned_end))
        )
        if self.drain_s > 0:  # HTEX drain_period, fixed when the block's workers start
            drain_at = max(now, now + block.walltime_s - self.drain_s)
            block.events.append(self.clock.call_at(drain_at, lambda: self._drain(block)))
        self._dispatch()

    def _drain(self, block: Block) -> None:
        block.draining = True
        if block.active and block.task is None:
            self._end_block(block, "drained")

    def _dispatch(self) -> None:
        while self.waiting:
            free = [b for b in self.blocks if b.running and b.task is None and not b.draining]
            if not free:
                break
            block = max(free, key=lambda b: (b.ends_at or 0.0, b.id))
            task = self.waiting.popleft()
            # a cancelled future: the server gave up on it, the endpoint runs it all the same
            task.abandoned = not task.future.set_running_or_notify_cancel()
            self._start_task(task, block)
        if self.pilot.mode == "per_task":  # a job whose task went away ends at once
            for block in self.blocks:
                if (
                    block.running
                    and block.task is None
                    and block.tasks_run == 0
                    and not self.waiting
                ):
                    self._end_block(block, "done")
        self._maybe_idle()

    def _start_task(self, task: SimTask, block: Block) -> None:
        task.block, block.task = block, task
        task.cold = block.tasks_run == 0
        block.tasks_run += 1
        task.started_at = self.clock.now()
        task.load_s = self.speed.load_cold_s if task.cold else self.speed.load_warm_s
        planned = task.payload.get("local_steps") if isinstance(task.payload, dict) else None
        if task.abandoned:  # nobody reads its result: its time, not its training
            task.outcome = CallOutcome(None, None, False)
            task.train_s = int(planned or 0) * self.speed.seconds_per_step
        else:
            task.outcome = self.run(task.fn, task.payload)  # the real work, now
        if task.outcome.result is not None:
            steps = task.outcome.result.get("steps")
            task.train_s = (
                int(planned or 0 if steps is None else steps) * self.speed.seconds_per_step
            )
        assert block.ends_at is not None
        if task.finishes_at <= block.ends_at:
            task.finish_event = self.clock.call_at(
                task.finishes_at, lambda: self._finish_task(task)
            )
        # else: the block ends first and takes the task with it (_end_block)

    def _finish_task(self, task: SimTask) -> None:
        block, outcome = task.block, task.outcome
        assert block is not None and outcome is not None
        block.task = None
        self.outstanding -= 1
        if task.abandoned:
            pass
        elif outcome.error is not None:
            error = remote_failure(outcome.error)
            self.clock.call_later(self.transfer.up_s, lambda: self._settle(task, None, error))
        else:
            result = self.virtual_result(task)
            blob = result.get("adapter")
            up = self.transfer.seconds(self.transfer.up_s, inline_nbytes(blob))
            self.clock.call_later(up, lambda: self._settle(task, result, None))
        if self.pilot.mode == "per_task":
            self._end_block(block, "done")
        elif block.draining:
            self._end_block(block, "drained")
        self._dispatch()

    def virtual_result(self, task: SimTask) -> dict[str, Any]:
        """The real result, its times replaced by the simulated ones."""
        assert task.outcome is not None and task.outcome.result is not None
        assert task.block is not None and task.started_at is not None
        result = dict(task.outcome.result)
        timings = dict(result.get("timings") or {})
        real_train_s = timings.get("train_s")
        timings.update(load_s=task.load_s, train_s=task.train_s, serialize_s=0.0)
        for key in ("fetch_s", "store_s"):
            if key in timings:
                timings[key] = 0.0
        block = task.block
        result.update(
            timings=timings,
            started_at=task.started_at,
            finished_at=task.finishes_at,
            cache_hit=not task.cold,
            host=f"{self.site}-block{block.id}",
            pid=block.id,
            simulated={
                "site": self.site,
                "profile": self.profile.name,
                "block": block.id,
                "cold": task.cold,
                "block_queue_wait_s": block.wait_s,
                "reused_result": task.outcome.reused,
                "real_train_s": real_train_s,
            },
        )
        return result

    @staticmethod
    def _settle(task: SimTask, result: dict[str, Any] | None, error: BaseException | None) -> None:
        try:
            if error is not None:
                task.future.set_exception(error)
            else:
                task.future.set_result(result)
        except InvalidStateError:
            pass

    def _end_block(self, block: Block, reason: str) -> None:
        if not block.active:
            return
        for event in block.events:
            event.cancel()
        block.ended_at, block.end_reason = self.clock.now(), reason
        task, block.task = block.task, None
        if task is not None:  # killed with the block: reported when Parsl notices
            if task.finish_event is not None:
                task.finish_event.cancel()
            error = manager_lost(self.site, block, reason)

            def lost() -> None:
                self.outstanding -= 1
                self._settle(task, None, error)
                self._maybe_idle()

            self.clock.call_later(self.pilot.lost_after_s, lost)
        self._record(block)
        self._want_blocks()

    # -- what a dispatch policy may do and see ----------------------------------------------
    def request_block(self) -> bool:
        """Submit the next pilot now, before the running one's walltime ends: at most one
        block beyond ``max_blocks``, and none while one is still queued. False: not done."""
        active = self._active()
        if (
            self.closed
            or self.pilot.mode != "pilot"
            or any(b.started_at is None for b in active)
            or len(active) > self.pilot.max_blocks
        ):
            return False
        self._submit_blocks(1)
        return True

    def set_drain(self, drain_s: float) -> None:
        """Blocks started from now on stop taking tasks ``drain_s`` before their walltime
        and end when idle (Parsl HTEX ``drain_period`` = walltime - drain_s)."""
        self.drain_s = max(0.0, float(drain_s))

    def set_walltime(self, walltime_s: float) -> None:
        """The walltime of the pilots submitted from now on (a job shape)."""
        self.walltime_s = float(walltime_s)

    def pilots(self) -> list[tuple[float, float | None, float | None]]:
        """The pilots held or queued, as the scheduler lists them: (submitted, started,
        walltime end), None while queued."""
        return [(b.submitted_at, b.started_at, b.walltime_end) for b in self._active()]

    # -- idle release --------------------------------------------------------------------
    def set_idle(
        self, *, max_idletime_s: float | None = None, min_blocks: int | None = None
    ) -> None:
        """Change the idle settings from now on (a dispatch policy's two levers); an idle
        timer already running is recomputed from now."""
        changes = {
            k: v
            for k, v in (("max_idletime_s", max_idletime_s), ("min_blocks", min_blocks))
            if v is not None
        }
        self.pilot = type(self.pilot).model_validate({**self.pilot.model_dump(), **changes})
        if self._release_event is not None:
            self._release_event.cancel()
            self._release_event = None
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if (
            self.closed
            or self.pilot.mode != "pilot"
            or self.outstanding > 0
            or self._release_event is not None
            or len(self._active()) <= self.pilot.min_blocks
        ):
            return
        period, idle = self.pilot.strategy_period_s, self.pilot.max_idletime_s
        idle_since = self.next_poll(self.clock.now())
        # released at the first poll where the idle time *exceeds* max_idletime
        release_at = idle_since + ((math.floor(idle / period) + 1) * period if period > 0 else idle)
        self._release_event = self.clock.call_at(release_at, self._release)

    def _release(self) -> None:
        self._release_event = None
        if self.outstanding > 0:
            return
        active = self._active()
        surplus = len(active) - self.pilot.min_blocks
        # Parsl cancels queued blocks before running ones, newest first
        order = sorted(active, key=lambda b: (b.started_at is not None, -b.id))
        for block in order[: max(0, surplus)]:
            self._end_block(block, "idle" if block.started_at is not None else "cancelled")

    # -- accounting ----------------------------------------------------------------------
    def _record(self, block: Block) -> None:
        held = 0.0 if block.started_at is None else (block.ended_at or 0.0) - block.started_at
        record = {
            "kind": "pilot",
            "site": self.site,
            "profile": self.profile.name,
            "facility": self.profile.facility,
            "queue": self.profile.queue,
            "mode": self.pilot.mode,
            "block": block.id,
            "nodes": self.nodes,
            "walltime_s": block.walltime_s,
            "submitted_at": block.submitted_at,
            "started_at": block.started_at,
            "ended_at": block.ended_at,
            "queue_wait_s": None
            if block.started_at is None
            else block.started_at - block.submitted_at,
            "held_s": held,
            "node_hours": self.nodes * held / 3600.0,
            "end_reason": block.end_reason,
            "tasks": block.tasks_run,
        }
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def node_hours(self) -> float:
        """Charged so far: ended blocks, and running ones up to now."""
        now = self.clock.now()
        total = 0.0
        for b in self.blocks:
            if b.started_at is not None:
                total += self.nodes * (
                    (b.ended_at if b.ended_at is not None else now) - b.started_at
                )
        return total / 3600.0

    def shutdown(self) -> None:
        """End every block now (reason ``shutdown``); queued tasks are cancelled."""
        if self.closed:
            return
        self.closed = True
        for event in (self._scale_event, self._release_event):
            if event is not None:
                event.cancel()
        while self.waiting:
            self.waiting.popleft().future.cancel()
        for block in self._active():
            running = block.task
            self._end_block(block, "shutdown")
            if running is not None:
                self._settle(running, None, RuntimeError(f"simulated site {self.site} shut down"))
