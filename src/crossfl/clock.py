"""The time the round drivers read: wall time, or a discrete-event virtual time (the
simulation's, crossfl.simulate).

A driver that reads ``clock.now()`` and waits with ``clock.wait(...)`` instead of
``time.time()`` and ``concurrent.futures.wait`` runs unchanged against real sites
(:class:`RealClock`) and against simulated ones (:class:`VirtualClock`).

The virtual clock is a discrete-event scheduler: simulated executors register what
happens when (``call_at``), and nothing happens between events. ``wait`` runs the
events in time order until the futures it was given satisfy ``return_when`` or the
timeout is reached, and returns what is done, exactly as
``concurrent.futures.wait`` would have after that much wall time. Everything runs in
the thread that calls ``wait`` (or ``sleep`` / ``run_until``): one thread, so a run
is deterministic.
"""

from __future__ import annotations

import concurrent.futures as cf
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "REAL_CLOCK",
    "HorizonReached",
    "Clock",
    "RealClock",
    "SimulationStalled",
    "VirtualClock",
    "bind_strategy_clock",
]


class Waited(NamedTuple):
    """What ``concurrent.futures.wait`` returns."""

    done: set[Future]
    not_done: set[Future]


class Handle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What a driver needs from time."""

    def now(self) -> float:
        """Seconds since the epoch (real) or since the simulation began (virtual)."""
        ...

    def wait(
        self, fs: Iterable[Future], timeout: float | None = None, return_when: str = ALL_COMPLETED
    ) -> Waited:
        """``concurrent.futures.wait``."""
        ...

    def sleep(self, seconds: float) -> None:
        """``time.sleep`` (retry backoff between submissions)."""
        ...

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Handle:
        """Run ``fn`` after ``delay`` seconds (a resubmission timer); ``.cancel()``."""
        ...

    def result(self, future: Future, timeout: float | None = None) -> Any:
        """``future.result(timeout)``; TimeoutError when it is not done in time."""
        ...


class RealClock:
    """Wall time: what the drivers use today."""

    def now(self) -> float:
        return time.time()

    def wait(
        self, fs: Iterable[Future], timeout: float | None = None, return_when: str = ALL_COMPLETED
    ) -> Waited:
        done, not_done = cf.wait(fs, timeout=timeout, return_when=return_when)
        return Waited(done, not_done)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Handle:
        timer = threading.Timer(max(0.0, delay), fn)
        timer.daemon = True
        timer.start()
        return timer

    def result(self, future: Future, timeout: float | None = None) -> Any:
        return future.result(timeout=timeout)


REAL_CLOCK = RealClock()
"""The wall clock every driver reads unless it is given another."""


class SimulationStalled(RuntimeError):
    """``wait`` without a timeout on futures that no scheduled event will complete."""


class HorizonReached(Exception):
    """Virtual time reached the replay's horizon: the run is cut there (censored)."""


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


def _satisfied(fs: list[Future], return_when: str) -> bool:
    done = [f for f in fs if f.done()]
    if return_when == FIRST_COMPLETED:
        return bool(done) or not fs
    if return_when == FIRST_EXCEPTION:
        failed = any(not f.cancelled() and f.exception() is not None for f in done)
        return failed or len(done) == len(fs)
    if return_when == ALL_COMPLETED:
        return len(done) == len(fs)
    raise ValueError(f"unknown return_when {return_when!r}")


class VirtualClock:
    """Discrete-event time. ``now()`` moves only when events run or a wait times out."""

    def __init__(self, start: float = 0.0, horizon: float | None = None) -> None:
        self._now = float(start)
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self.events_run = 0
        self.horizon = horizon  # HorizonReached rather than run past it

    def _stop_at(self, when: float) -> None:
        """Raise HorizonReached (standing at the horizon) if ``when`` is past it."""
        if self.horizon is not None and when > self.horizon:
            self._now = max(self._now, self.horizon)
            raise HorizonReached(f"virtual time reached the horizon, {self.horizon:.0f} s")

    def now(self) -> float:
        return self._now

    # -- scheduling ----------------------------------------------------------------
    def call_at(self, when: float, fn: Callable[[], Any]) -> _Event:
        """Run ``fn`` when virtual time reaches ``when`` (never in the past); events at
        the same time run in the order they were scheduled."""
        event = _Event(max(float(when), self._now), next(self._seq), fn)
        heapq.heappush(self._events, event)
        return event

    def call_later(self, delay: float, fn: Callable[[], Any]) -> _Event:
        return self.call_at(self._now + max(0.0, delay), fn)

    def next_event_at(self) -> float | None:
        while self._events and self._events[0].cancelled:
            heapq.heappop(self._events)
        return self._events[0].at if self._events else None

    def _run_next(self) -> None:
        self._stop_at(self._events[0].at)
        event = heapq.heappop(self._events)
        self._now = max(self._now, event.at)
        if not event.cancelled:
            self.events_run += 1
            event.fn()

    def run_until(self, when: float) -> None:
        """Run every event up to ``when``, then stand at ``when``."""
        while (at := self.next_event_at()) is not None and at <= when:
            self._run_next()
        self._stop_at(when)
        self._now = max(self._now, when)

    def sleep(self, seconds: float) -> None:
        self.run_until(self._now + max(0.0, seconds))

    # -- waiting -------------------------------------------------------------------
    def wait(
        self, fs: Iterable[Future], timeout: float | None = None, return_when: str = ALL_COMPLETED
    ) -> Waited:
        futures = list(fs)
        deadline = None if timeout is None else self._now + max(0.0, timeout)
        while not _satisfied(futures, return_when):
            at = self.next_event_at()
            if at is None or (deadline is not None and at > deadline):
                if deadline is None:
                    pending = sum(1 for f in futures if not f.done())
                    raise SimulationStalled(
                        f"waiting without a timeout for {pending} future(s) that no "
                        f"scheduled event completes (were they made by a simulated "
                        f"executor on this clock?)"
                    )
                self._stop_at(deadline)
                self._now = max(self._now, deadline)
                break
            self._run_next()
        done = {f for f in futures if f.done()}
        return Waited(done, set(futures) - done)

    def result(self, future: Future, timeout: float | None = None) -> Any:
        """``future.result(timeout)`` in virtual time: raises TimeoutError when the
        future is not done ``timeout`` virtual seconds from now."""
        self.wait([future], timeout=timeout)
        if not future.done():
            raise TimeoutError(f"not done after {timeout} virtual seconds")
        return future.result()


def bind_strategy_clock(strategy: Any, clock: Clock) -> None:
    """Make a strategy that keeps its own time (FedCompass: ``self.clock`` and
    ``reset_clock()``) read ``clock`` instead. Strategies without one are left alone."""
    if hasattr(strategy, "clock"):
        strategy.clock = clock.now
        reset = getattr(strategy, "reset_clock", None)
        if callable(reset):
            reset()
