"""crossfl.server.faults: failure classes, retries with backoff on a real thread pool,
parking a failing site."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from globus_compute_sdk.errors import TaskExecutionFailed

from crossfl.server.faults import Parking, RetryingTask, RetryPolicy, is_system_failure

ROOT = Path(__file__).resolve().parents[1]
WORKER_LOST = (
    'Traceback (most recent call last):\n  File "x", line 1\n'
    "parsl.executors.high_throughput.errors.WorkerLost: Task failure due to loss of worker 3 on host n1"
)


USER_ERROR = 'Traceback (most recent call last):\n  File "x"\ncrossfl.errors.UserError: data_path: no records'


@pytest.mark.parametrize(
    ("exc", "system"),
    [
        (TaskExecutionFailed(WORKER_LOST), True),
        (
            TaskExecutionFailed(
                "parsl.executors.high_throughput.errors.ManagerLost: Task failure due to loss of "
                "manager abc on host n2"
            ),
            True,
        ),
        (TaskExecutionFailed(USER_ERROR), False),
        (TaskExecutionFailed("Traceback\nValueError: bad shape"), False),
        (TaskExecutionFailed("Traceback\nRuntimeError: training diverged"), False),
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("timed out"), True),
        (ValueError("x"), False),
    ],
)
def test_system_failures_are_told_from_task_errors(exc: BaseException, system: bool) -> None:
    assert is_system_failure(exc) is system


class Flaky:
    """Fails the first ``n`` calls with ``exc``, then returns its argument."""

    def __init__(self, n: int, exc: BaseException) -> None:
        self.n, self.exc, self.calls = n, exc, 0
        self.lock = threading.Lock()

    def __call__(self, payload: Any) -> Any:
        with self.lock:
            self.calls += 1
            if self.calls <= self.n:
                raise self.exc
        return payload


def test_system_failures_are_retried_with_backoff() -> None:
    fn = Flaky(2, TaskExecutionFailed(WORKER_LOST))
    with ThreadPoolExecutor(2) as pool:
        task = RetryingTask(pool, fn, {"x": 1}, RetryPolicy(retries=2, backoff_s=0.01))
        assert task.future.result(timeout=10) == {"x": 1}
    assert fn.calls == 3 and len(task.attempts) == 3
    assert all(a.system for a in task.attempts[:2]) and "WorkerLost" in (
        task.attempts[0].error or ""
    )


def test_retries_run_out_and_user_errors_are_not_retried() -> None:
    with ThreadPoolExecutor(2) as pool:
        lost = RetryingTask(
            pool, Flaky(5, ConnectionError("down")), 1, RetryPolicy(retries=1, backoff_s=0.01)
        )
        with pytest.raises(ConnectionError):
            lost.future.result(timeout=10)
        assert len(lost.attempts) == 2
        user = Flaky(5, TaskExecutionFailed(USER_ERROR))
        bad = RetryingTask(pool, user, 1, RetryPolicy(retries=3, backoff_s=0.01))
        with pytest.raises(TaskExecutionFailed):
            bad.future.result(timeout=10)
        assert user.calls == 1 and not bad.attempts[0].system


def test_blocking_calls_retry_system_failures_only() -> None:
    from crossfl.server.faults import call_with_retry
    from crossfl.server.transport import TransferFailed

    flaky = Flaky(1, TransferFailed("Globus Transfer t1 ended FAILED"))
    assert (
        call_with_retry(lambda: flaky(7), RetryPolicy(retries=1, backoff_s=0.01)) == 7
        and flaky.calls == 2
    )
    wrong = Flaky(1, ValueError("no"))
    with pytest.raises(ValueError):
        call_with_retry(lambda: wrong(7), RetryPolicy(retries=3, backoff_s=0.01))
    assert wrong.calls == 1


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(retries=5, backoff_s=2, backoff_max_s=5)
    assert [policy.delay(n) for n in (2, 3, 4, 5)] == [2, 4, 5, 5]


def test_a_site_failing_in_a_row_is_parked_then_readmitted() -> None:
    parking = Parking(park_after=2, park_rounds=2)
    assert not parking.record("a", False, 1)
    assert not parking.record("a", True, 2)  # a success resets the count
    assert not parking.record("a", False, 3)
    assert parking.record("a", False, 4)  # parked: sits out rounds 5 and 6
    assert parking.is_parked("a", 5) and parking.is_parked("a", 6)
    restored = Parking(2, 2)
    restored.load_state_dict(parking.state_dict())
    assert not restored.is_parked("a", 7) and not restored.is_parked("b", 5)
