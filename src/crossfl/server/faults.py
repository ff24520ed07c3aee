"""Faults at HPC sites: which failures are worth another try, resubmission with backoff, and
parking a site that keeps failing.

A *system* failure is the facility's, not the task's: parsl lost the worker or the manager (the
node died, the pilot job hit its walltime), a Globus Transfer did not succeed, or the endpoint
is offline. Those are retried with exponential backoff. A *task* failure (the client raised
UserError/ValueError, training diverged, the result was too large) would fail again the same
way and is never retried.

Retries live in one layer per kind of failure. An HTTP call to a Globus service (Compute
submission, Transfer submit/wait/status) is retried by globus-sdk itself (``RetryConfig``:
5 retries, exponential backoff, ``Retry-After`` honoured, on connection errors, 429 and 5xx);
when it still fails, the kit does not call it again (that made up to 18 calls of one failing
request), it reports the failure.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crossfl.clock import REAL_CLOCK, Clock, Handle
from crossfl.endpoints import failure_summary, refusal

# parsl.executors.high_throughput.errors: "WorkerLost: Task failure due to loss of worker ..."
# and "ManagerLost: Task failure due to loss of manager ..."; the engine's bad-state error when
# its provider cannot get blocks; the service's word for an endpoint that is not connected.
SYSTEM_PATTERNS = re.compile(
    r"WorkerLost|ManagerLost|loss of (worker|manager)|BadStateException|executor is in a bad state"
    r"|endpoint (is )?offline|ConnectionError|ConnectionResetError|ConnectionRefusedError|TransferFailed",
    re.IGNORECASE,
)
# A task the client rejected: retrying sends the same bad input again.
USER_PATTERNS = re.compile(r"(UserError|ValueError|MaxResultSizeExceeded)\b")


def is_system_failure(exc: BaseException) -> bool:
    """True for a failure the facility caused (worth retrying), False for the task's own
    (a result refused as not data included: the site would send it again)."""
    if refusal(exc) is not None:
        return False
    remote = getattr(exc, "remote_data", None)
    if isinstance(remote, str):
        last = failure_summary(exc)
        if USER_PATTERNS.search(last):
            return False
        return bool(SYSTEM_PATTERNS.search(remote))
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import globus_sdk
    except ImportError:  # pragma: no cover - globus-sdk is a dependency of the SDK
        return False
    if isinstance(exc, globus_sdk.NetworkError):  # globus-sdk retried it already
        return False
    if isinstance(exc, globus_sdk.GlobusAPIError):  # transient statuses: retried already
        return "offline" in str(exc).lower()
    return bool(SYSTEM_PATTERNS.search(f"{type(exc).__name__}: {exc}"))


@dataclass
class RetryPolicy:
    retries: int = 2
    backoff_s: float = 2.0
    backoff_max_s: float = 120.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (2, 3, ...): doubling, capped."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempt - 2))


T = TypeVar("T")


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    classify: Callable[[BaseException], bool] = is_system_failure,
    clock: Clock = REAL_CLOCK,
) -> T:
    """``fn()`` in this thread, again after a system failure (e.g. a Globus Transfer that did
    not succeed), with the policy's backoff; other errors and the last failure propagate."""
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as exc:
            if attempt > policy.retries or not classify(exc):
                raise
            attempt += 1
            clock.sleep(policy.delay(attempt))


@dataclass
class Attempt:
    started: float
    error: str | None = None
    system: bool = False


class RetryingTask:
    """One logical task: submitted, and resubmitted after a system failure up to
    ``policy.retries`` times. ``future`` resolves to the last attempt's outcome."""

    def __init__(
        self,
        executor: Executor,
        fn: Callable[..., Any],
        payload: Any,
        policy: RetryPolicy,
        classify: Callable[[BaseException], bool] = is_system_failure,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self.executor, self.fn, self.payload, self.policy, self.classify = (
            executor,
            fn,
            payload,
            policy,
            classify,
        )
        self.clock = clock
        self.future: Future = Future()
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._timer: Handle | None = None
        self._inner: Future | None = None
        self._submit()

    @property
    def submitted_at(self) -> float:
        return self.attempts[0].started

    @property
    def last_submitted_at(self) -> float:
        return self.attempts[-1].started

    def _submit(self) -> None:
        with self._lock:
            if self.future.done():
                return
            self.attempts.append(Attempt(started=self.clock.now()))
            try:
                inner = self.executor.submit(self.fn, self.payload)
            except BaseException as exc:  # a shut-down executor, a payload too large, no connection
                self._failed(exc)
                return
            self._inner = inner
        inner.add_done_callback(self._done)

    def _done(self, inner: Future) -> None:
        if inner.cancelled():
            self.future.cancel()
            return
        exc = inner.exception()
        if exc is None:
            with contextlib.suppress(InvalidStateError):
                self.future.set_result(inner.result())
            return
        with self._lock:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        attempt = self.attempts[-1]
        attempt.error, attempt.system = failure_summary(exc), self.classify(exc)
        if attempt.system and len(self.attempts) <= self.policy.retries and not self.future.done():
            delay = self.policy.delay(len(self.attempts) + 1)
            self._timer = self.clock.call_later(delay, self._submit)
            return
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._inner is not None:
                self._inner.cancel()
            if not self.future.done():
                self.future.cancel()


@dataclass
class Parking:
    """Sites that failed ``park_after`` tasks in a row sit out ``park_rounds`` rounds, then
    come back with a clean slate."""

    park_after: int = 3
    park_rounds: int = 2
    failures: dict[str, int] = field(default_factory=dict)
    parked_until: dict[str, int] = field(
        default_factory=dict
    )  # site -> first round it may run again

    def record(self, site: str, ok: bool, rnd: int) -> bool:
        """Count a task outcome; True when this failure parks the site."""
        if ok:
            self.failures[site] = 0
            return False
        self.failures[site] = self.failures.get(site, 0) + 1
        if self.failures[site] >= self.park_after:
            self.parked_until[site] = rnd + 1 + self.park_rounds
            self.failures[site] = 0
            return True
        return False

    def is_parked(self, site: str, rnd: int) -> bool:
        until = self.parked_until.get(site)
        if until is None:
            return False
        if rnd >= until:
            del self.parked_until[site]
            return False
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"failures": dict(self.failures), "parked_until": dict(self.parked_until)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.failures = {str(k): int(v) for k, v in state.get("failures", {}).items()}
        self.parked_until = {str(k): int(v) for k, v in state.get("parked_until", {}).items()}
