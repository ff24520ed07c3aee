"""The local seam: the `local` site's rendered config, loaded by the endpoint's own loader, runs
tasks on a real GlobusComputeEngine with the endpoint's serialization and limits."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil
import pytest
from globus_compute_sdk.errors import TaskExecutionFailed

from crossfl.endpoints import (
    MAX_SUBMISSION_BYTES,
    LocalEngineExecutor,
    PayloadTooLarge,
    failure_summary,
)
from crossfl.errors import UserError
from crossfl.render import render_site, render_user_config

pytestmark = pytest.mark.slow  # a real engine per module (`make test-fast` leaves them out)


def engine_processes() -> list[psutil.Process]:
    me = psutil.Process()
    return [
        p
        for p in me.children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


@pytest.fixture(scope="module")
def local_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    site_dir = render_site("local", out_root=tmp_path_factory.mktemp("sites"))
    return render_user_config(site_dir, {"max_workers_per_node": 1})


@pytest.fixture(scope="module")
def executor(local_config: str, tmp_path_factory: pytest.TempPathFactory):
    ex = LocalEngineExecutor("t", local_config, tmp_path_factory.mktemp("engine"))
    try:
        yield ex
    finally:
        ex.shutdown()


def test_runs_function_by_reference_in_a_worker(executor: LocalEngineExecutor) -> None:
    assert executor.submit(platform.node).result(timeout=120) == platform.node()
    worker_pid = executor.submit(os.getpid).result(timeout=120)
    assert worker_pid != os.getpid()


def test_remote_error_is_task_execution_failed(executor: LocalEngineExecutor) -> None:
    fut = executor.submit(int, "not a number")
    with pytest.raises(TaskExecutionFailed) as info:
        fut.result(timeout=120)
    assert failure_summary(info.value).startswith("ValueError: invalid literal")


def test_result_size_limit_is_the_endpoints(executor: LocalEngineExecutor) -> None:
    fut = executor.submit(bytes, 11 * 1024 * 1024)
    with pytest.raises(TaskExecutionFailed) as info:
        fut.result(timeout=120)
    assert "MaxResultSizeExceeded" in failure_summary(info.value)
    assert len(executor.submit(bytes, 7 * 1000 * 1000).result(timeout=120)) == 7 * 1000 * 1000


def test_submission_limit_is_the_services(executor: LocalEngineExecutor) -> None:
    with pytest.raises(PayloadTooLarge):
        executor.submit(len, b"x" * (MAX_SUBMISSION_BYTES + 1))


def test_shutdown_leaves_no_processes(local_config: str, tmp_path: Path) -> None:
    before = {p.pid for p in engine_processes()}
    ex = LocalEngineExecutor("s", local_config, tmp_path)
    assert ex.submit(os.getpid).result(timeout=120) > 0
    assert {p.pid for p in engine_processes()} - before, "engine should have started processes"
    ex.shutdown()
    left = [p for p in engine_processes() if p.pid not in before]
    gone, alive = psutil.wait_procs(left, timeout=15)
    assert not alive, [p.cmdline() for p in alive]


def test_bad_engine_config_is_a_user_error(tmp_path: Path) -> None:
    bad = "engine:\n  type: GlobusComputeEngine\n  provider:\n    type: LocalProvider\n    colour: red\n"
    with pytest.raises(UserError) as info:
        LocalEngineExecutor("x", bad, tmp_path, source="bad.yaml")
    assert info.value.file == "bad.yaml"
