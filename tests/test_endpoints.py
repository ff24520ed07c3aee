"""The local seam: the `local` site's rendered config, loaded by the endpoint's own loader, runs
tasks on a real GlobusComputeEngine with the endpoint's serialization and limits."""

from __future__ import annotations

import copy
import operator
import os
import platform
from pathlib import Path

import dill
import psutil
import pytest
from globus_compute_sdk.errors import TaskExecutionFailed
from globus_compute_sdk.sdk.shell_function import ShellResult
from globus_compute_sdk.serialize.concretes import DillDataBase64, JSONData

from crossfl.client import probes
from crossfl.endpoints import (
    JSON_RESULTS,
    MAX_SUBMISSION_BYTES,
    SHELL_RESULTS,
    LocalEngineExecutor,
    PayloadTooLarge,
    ResultRefused,
    SiteSerializer,
    failure_summary,
    remote_executor,
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
    fut = executor.submit(operator.mul, "x", 11 * 1024 * 1024)
    with pytest.raises(TaskExecutionFailed) as info:
        fut.result(timeout=120)
    assert "MaxResultSizeExceeded" in failure_summary(info.value)
    big = executor.submit(operator.mul, "x", 7 * 1000 * 1000).result(timeout=120)
    assert len(big) == 7 * 1000 * 1000


def test_results_come_back_as_json_data(executor: LocalEngineExecutor) -> None:
    """The worker is asked for JSON (the SDK's JSONData); what is not JSON data fails there."""
    assert executor.result_serializers == JSON_RESULTS
    assert executor.submit(dict, a=[1, 2.5, "x", None]).result(timeout=120) == {
        "a": [1, 2.5, "x", None]
    }
    with pytest.raises(TaskExecutionFailed, match="SerializationError"):
        executor.submit(bytes, 3).result(timeout=120)


@pytest.mark.parametrize("shell", [False, True], ids=["json", "shell"])
def test_a_planted_pickle_is_refused_unread(local_config: str, tmp_path: Path, shell: bool) -> None:
    """A compromised site's endpoint answers with a dill pickle whose __reduce__ would run a
    command on the server: refused in one line naming the site, and nothing runs. An MPI
    site (shell results) reads a ShellResult, and nothing else, from a pickle."""
    marker = tmp_path / "pwned"
    ex = LocalEngineExecutor("mallory", local_config, tmp_path / "engine", shell_results=shell)
    ex.result_serializers = SHELL_RESULTS  # the endpoint pickles, whatever it was asked
    try:
        with pytest.raises(ResultRefused) as info:
            ex.submit(probes.Planted, str(marker)).result(timeout=120)
        if shell:
            ok = ShellResult("true", "", "", 0)
            got = ex.submit(copy.copy, ok).result(timeout=120)
            assert isinstance(got, ShellResult) and got.returncode == 0
    finally:
        ex.shutdown()
    message = str(info.value)
    assert message.startswith("site mallory sent") and "\n" not in message, message
    assert not marker.exists(), "the planted payload ran on the server"
    dill.loads(dill.dumps(probes.Planted(str(marker))))  # what unpickling it would have done
    assert marker.exists()


def test_the_sdk_executor_gets_the_same_restricted_serializer(monkeypatch) -> None:
    seen: dict = {}

    class Recorder:
        def __init__(self, **kwargs) -> None:
            seen.update(kwargs)

    monkeypatch.setattr("crossfl.endpoints.sdk_executor_class", lambda: Recorder)
    remote_executor("00000000-0000-0000-0000-000000000000", site="polaris", shell_results=True)
    serializer = seen["serializer"]
    assert isinstance(serializer, SiteSerializer) and serializer.site == "polaris"
    assert serializer.shell_results and seen["result_serializers"] == SHELL_RESULTS
    planted = DillDataBase64().serialize(probes.Planted("/nonexistent/x"))
    with pytest.raises(ResultRefused, match="site polaris sent a shell result"):
        serializer.deserialize(planted)
    with pytest.raises(ResultRefused, match="not a ShellResult"):
        serializer.deserialize(DillDataBase64().serialize({"returncode": 0}))
    shell = serializer.deserialize(DillDataBase64().serialize(ShellResult("c", "o", "e", 3)))
    assert isinstance(shell, ShellResult) and shell.returncode == 3
    assert serializer.deserialize(JSONData().serialize({"a": 1})) == {"a": 1}
    with pytest.raises(ResultRefused, match="not JSON data"):
        SiteSerializer("laptop").deserialize(DillDataBase64().serialize({"a": 1}))


def test_an_mpi_sites_one_serializer_sends_json_and_reads_only_data(monkeypatch) -> None:
    """The facility's MPI engine takes JSON arguments only (its allowed_serializers) and
    answers with a ShellResult: the one serializer packs the task key as JSON, reads back
    a ShellResult or JSON data and nothing else, and the kit's functions go by their ids."""
    seen: dict = {}
    registered: list = []

    class Recorder:
        def __init__(self, **kwargs) -> None:
            seen.update(kwargs)

        def register_function(self, fn, function_id=None, **_) -> str:
            registered.append((fn, function_id))
            return function_id

    monkeypatch.setattr("crossfl.endpoints.sdk_executor_class", lambda: Recorder)
    fn_id = "11111111-1111-1111-1111-111111111111"
    remote_executor(
        "00000000-0000-0000-0000-000000000000",
        json_data=True,
        function_ids=[(len, fn_id)],
        site="aurora",
        shell_results=True,
    )
    serializer = seen["serializer"]
    assert isinstance(serializer, SiteSerializer) and serializer.site == "aurora"
    assert registered == [(len, fn_id)] and seen["result_serializers"] == SHELL_RESULTS
    packed = serializer.serialize(("/lus/flare/x/tasks/aurora-0a1b2c.json",))
    assert packed.startswith(JSONData.identifier)
    with pytest.raises(ResultRefused, match="site aurora sent a shell result"):
        serializer.deserialize(DillDataBase64().serialize(probes.Planted("/nonexistent/x")))
    shell = serializer.deserialize(DillDataBase64().serialize(ShellResult("c", "o", "e", 0)))
    assert isinstance(shell, ShellResult) and shell.returncode == 0
    remote_executor("00000000-0000-0000-0000-000000000000", site="laptop")
    assert seen["serializer"].serialize((b"adapter",)).startswith(DillDataBase64.identifier)


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
