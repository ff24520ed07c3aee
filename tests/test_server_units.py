"""Server parts without an engine: failure classes, retries on a real thread pool, parking,
update screening, checkpoints, resumed metrics, transport choice and the Globus Transfer path
(the TransferClient substituted at its interface), and the new experiment fields."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from globus_compute_sdk.errors import TaskExecutionFailed

from crossfl.client import tasks
from crossfl.client.adapter_io import adapter_to_bytes, fresh_adapter_from_shapes
from crossfl.client.contract import EvalResult, LoraSpec, TrainResult, TrainTask
from crossfl.endpoints import ResultRefused
from crossfl.errors import UserError
from crossfl.server import checkpoint as ckpt
from crossfl.server.experiment import Experiment, load_experiment
from crossfl.server.faults import Parking, RetryingTask, RetryPolicy, is_system_failure
from crossfl.server.flat import FlatSpec
from crossfl.server.plan import RunPlan, SitePlan, driver_kind
from crossfl.server.records import AggregationRecord, ResumeRecord, TaskRecord
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
from crossfl.server.strategies import get_strategy
from crossfl.server.strategies.base import Update
from crossfl.server.telemetry import MetricsLog, live_records
from crossfl.server.transport import GlobusMover, TransferFailed, Transport, read_confined
from crossfl.sites import load_site

ROOT = Path(__file__).resolve().parents[1]
WORKER_LOST = (
    'Traceback (most recent call last):\n  File "x", line 1\n'
    "parsl.executors.high_throughput.errors.WorkerLost: Task failure due to loss of worker 3 on host n1"
)
USER_ERROR = 'Traceback (most recent call last):\n  File "x"\ncrossfl.errors.UserError: data_path: no records'


# ------------------------------------------------------------------------------ faults


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


# ------------------------------------------------------------------------------ screening


def test_updates_are_screened_for_layout_nan_and_distance() -> None:
    state = {"l.lora_A.weight": torch.zeros(2, 3), "l.lora_B.weight": torch.zeros(3, 2)}
    spec = FlatSpec.from_state(state)
    assert layout_problem(spec, state) is None
    assert "wrong shape" in (
        layout_problem(spec, {**state, "l.lora_A.weight": torch.zeros(4, 3)}) or ""
    )
    assert "missing" in (layout_problem(spec, {"l.lora_A.weight": torch.zeros(2, 3)}) or "")
    assert finite_problem(torch.tensor([0.0, float("nan"), float("inf")])).startswith(
        "non-finite: 2 of 3"
    )
    screen = DistanceScreen(factor=5, min_count=3)
    assert screen.outliers({"a": 1.0, "b": 100.0}) == {}  # too few to judge
    far = screen.outliers({"a": 1.0, "b": 1.2, "c": 0.9, "d": 50.0})
    assert list(far) == ["d"] and "5 x median" in far["d"]
    for d in (1.0, 1.1, 0.9):
        screen.accepted(d)
    assert list(screen.outliers({"e": 30.0})) == ["e"]  # async: judged against recent history


def test_one_update_is_screened_against_the_global_and_so_is_a_new_global() -> None:
    state = {"l.lora_A.weight": torch.ones(2, 3), "l.lora_B.weight": torch.zeros(3, 2)}
    spec = FlatSpec.from_state(state)
    assert "wrong dtype" in (
        layout_problem(spec, {**state, "l.lora_A.weight": torch.ones(2, 3).bfloat16()}) or ""
    )
    screen = DistanceScreen(factor=None, relative=10.0)
    g = spec.flatten(state)  # norm sqrt(6)
    assert screen.too_far(distance(g + 1.0, g), norm(g)) is None
    far = screen.too_far(distance(g * 100, g), norm(g))
    assert far is not None and "10 x its norm" in far
    assert "non-finite" in (screen.global_problem(g * float("inf"), g) or "")
    assert "last good global" in (screen.global_problem(g * 1e3, g) or "")
    assert screen.global_problem(g * 2, g) is None
    assert DistanceScreen(relative=None).global_problem(g * 1e3, g) is None


def test_a_sites_weight_is_bounded_by_what_the_server_knows() -> None:
    bounds = SampleBounds({"a": 100, "b": 5, "far": 0})  # far: a facility's own data, unknown
    assert bounds.counted("a", 80) == 80 and bounds.counted("b", 10**9) == 5
    assert bounds.counted("far", 10**9) == 100  # the largest known size
    assert bounds.counts == {"a": 100, "b": 5, "far": 100}
    unknown = SampleBounds({"x": 0, "y": 0})  # nothing known: equal weights
    assert unknown.counted("x", 10**9) == unknown.counted("y", 3) == 1
    assert unknown.counted("x", 0) == 0


def test_an_evaluations_answer_tokens_are_bounded() -> None:
    """What a site reports per task (tokens right, all tokens) is bounded like every other
    field of its result: counts, right within all, at most 1024 tasks."""
    good = {
        "val_loss": 1.0,
        "num_samples": 4,
        "timings": {"load_s": 0.0, "loss_s": 0.0, "generate_s": 0.0},
    }
    ok = EvalResult.from_wire({**good, "answer_tokens": {"t": [3, 5]}})
    assert ok.answer_tokens == {"t": (3, 5)}
    assert EvalResult.from_wire(ok.to_wire()) == ok  # JSON on the wire: a list, read back
    for bad in (
        {"t": [6, 5]},
        {"t": [-1, 5]},
        {"t": [1, 2, 3]},
        {"t": [0, 1 << 60]},
        {f"t{i}": [0, 1] for i in range(1025)},
        {"x" * 300: [0, 1]},
    ):
        with pytest.raises(UserError, match="answer_tokens"):
            EvalResult.from_wire({**good, "answer_tokens": bad})


def test_the_base_layout_comes_from_the_models_config(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    ).save_pretrained(tmp_path)  # a config.json, no weights
    lora = LoraSpec(r=2, alpha=4, target_modules=("q_proj",))
    spec = base_layout(str(tmp_path), lora, "bfloat16")
    assert spec.shapes[:2] == (torch.Size([2, 16]), torch.Size([16, 2]))
    assert spec.keys == tuple(
        f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{m}.weight"
        for i in range(2)
        for m in "AB"
    )
    assert set(spec.dtypes) == {torch.bfloat16}
    fresh = fresh_adapter_from_shapes(dict(zip(spec.keys, spec.shapes, strict=True)), 0)
    data = adapter_to_bytes(fresh, "bfloat16", metadata={"crossfl.lora": "x" * 300})
    assert len(data) <= adapter_size_bound(spec) < 2 * len(data) + 128 * 1024


# ------------------------------------------------------------------------------ results


def write_fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.write_bytes(b"ok"), None),
        (write_fifo, "is a FIFO"),
        (lambda p: p.symlink_to("/dev/zero"), "is a symbolic link"),
        (lambda p: p.write_bytes(b"x" * 101), "holds over 100 bytes"),
        (lambda p: p.parent.rename(p.parent.with_name("real")) or None, None),
    ],
    ids=["file", "fifo", "link", "oversize", "missing"],
)
def test_a_result_file_is_read_only_when_it_is_a_small_regular_file(
    tmp_path: Path, make: Any, words: str | None
) -> None:
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "r.safetensors"
    make(target)
    if not (tmp_path / "results").exists():
        with pytest.raises(FileNotFoundError):
            read_confined(tmp_path, "results/r.safetensors", 100, "site x's adapter")
        return
    if words is None:
        assert read_confined(tmp_path, "results/r.safetensors", 100, "site x's adapter") == b"ok"
        return
    with pytest.raises(ResultRefused) as info:
        read_confined(tmp_path, "results/r.safetensors", 100, "site x's adapter")
    assert str(info.value).startswith("site x's adapter: results/r.safetensors") and words in str(
        info.value
    )


def test_a_linked_result_directory_is_refused(tmp_path: Path) -> None:
    """The site swaps its results directory for a link elsewhere: nothing below it is read."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "r.safetensors").write_bytes(b"secret")
    (tmp_path / "transport").mkdir()
    (tmp_path / "transport" / "results").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ResultRefused, match="symbolic link"):
        read_confined(tmp_path / "transport", "results/r.safetensors", 100, "site x's adapter")


# ------------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip_keeps_tensors_strategy_and_rng(tmp_path: Path) -> None:
    state = {"l.lora_A.weight": torch.randn(2, 3), "l.lora_B.weight": torch.randn(3, 2)}
    spec = FlatSpec.from_state(state)
    flat = spec.flatten(state)
    buff = get_strategy("fedbuff", K=3)
    buff.aggregate(flat, [Update("a", flat + 1, 5, 0, 2)], 0)  # buffered: state worth keeping
    torch.manual_seed(3)
    c = ckpt.Checkpoint(
        round=4,
        version=3,
        updates=9,
        elapsed_s=12.5,
        metrics_bytes=1234,
        strategy_name="fedbuff",
        strategy_state=buff.state_dict(),
        global_flat=flat,
        spec=spec,
        parking={"failures": {"a": 1}, "parked_until": {}},
        screen_history=[0.5],
        rng=ckpt.rng_state(),
    )
    expected_draw = torch.rand(3)
    ckpt.save(tmp_path, c, adapter_to_bytes(state))
    back = ckpt.load(tmp_path)
    assert back is not None and (back.round, back.version, back.updates, back.metrics_bytes) == (
        4,
        3,
        9,
        1234,
    )
    assert torch.equal(back.global_flat, flat) and back.spec == spec
    again = get_strategy("fedbuff", K=3)
    again.load_state_dict(back.strategy_state)
    assert again.count == 1 and torch.equal(again.buffer, buff.buffer)
    ckpt.restore_rng(back.rng)
    assert torch.equal(torch.rand(3), expected_draw)
    assert not ckpt.is_finished(tmp_path)
    assert ckpt.load(tmp_path / "none") is None
    (tmp_path / "round-00004" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        ckpt.load(tmp_path)


def task_record(rnd: int, site: str, **changes: Any) -> TaskRecord:
    return TaskRecord(
        round=rnd,
        site=site,
        status="ok",
        submitted_at=1.0,
        received_at=2.0,
        submitted_rel_s=0.5,
        bytes_down=0,
        transport="inline",
        attempts=1,
        base_version=0,
        local_steps=1,
        **changes,
    )


def test_resumed_metrics_leave_out_the_unfinished_round(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(task_record(1, "a", train_loss=0.5))
    log.write(
        AggregationRecord(
            round=1, version=1, driver="sync", sites=["a"], elapsed_s=1.0, staleness={"a": 0}
        )
    )
    position = log.position()
    log.write(task_record(2, "killed"))
    with path.open("a") as fh:
        fh.write('{"kind": "task", "rou')  # a line a killed process cut short
    log.write(ResumeRecord(round=1, version=1, metrics_bytes=position, at=3.0, elapsed_s=1.0))
    log.write(task_record(2, "again"))
    live = live_records(path)
    assert [r.site for r in live if isinstance(r, TaskRecord)] == ["a", "again"]
    assert live[0] == task_record(1, "a", train_loss=0.5)  # the record reads back as written
    assert (
        "killed" in path.read_text() and '"error"' not in path.read_text()
    )  # unset fields stay out


# ------------------------------------------------------------------------------ transport


def experiment(tmp_path: Path, **changes: Any) -> Experiment:
    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "local-demo.yaml").read_text())
    raw.update(changes)
    return Experiment.model_validate(raw)


def plan_of(exp: Experiment, here: set[str]) -> RunPlan:
    """A plan without the checks: sites in ``here`` run on this machine."""
    local = load_site("local")
    sites = {
        s.name: SitePlan(
            name=s.name,
            catalog=local,
            runs_here=s.name in here,
            model_path="/m",
            data_path="/d",
            shared_dir=s.transport.shared_dir,
            nodes=1,
            user_options={},
        )
        for s in exp.sites
    }
    return RunPlan(
        experiment=exp,
        source=Path("exp.yaml"),
        sites=sites,
        driver="sync",
        validation_path="/v",
        train_path=None,
    )


TASK = TrainTask(model_path="/m", data_path="/d", local_steps=1, batch_size=1, lr=0.1)


def test_transport_mode_follows_size_and_site_settings(tmp_path: Path) -> None:
    exp = experiment(tmp_path, transport={"inline_limit_mb": 1})
    t = Transport(plan_of(exp, {"alpha", "beta"}), tmp_path / "run")
    assert t.mode_for("alpha", 1000) == "inline"
    assert t.mode_for("alpha", 2_000_000) == "shared_fs"  # local sites share the run directory
    with pytest.raises(UserError, match="inline limit"):
        t.mode_for("gamma", 2_000_000)  # a remote site with no shared dir or collection
    assert t.mode_for("gamma", None) == "inline"


class FakeTransferClient:
    """globus_sdk.TransferClient at its interface: collections are directories here."""

    def __init__(self, roots: dict[str, Path]) -> None:
        self.roots, self.tasks, self.submitted = roots, {}, []

    def submit_transfer(self, data: Any) -> dict[str, str]:
        src, dst = self.roots[data["source_endpoint"]], self.roots[data["destination_endpoint"]]
        for item in data["DATA"]:
            target = dst / item["destination_path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / item["source_path"].lstrip("/"), target)
        task_id = str(uuid.uuid4())
        self.tasks[task_id] = {"status": "SUCCEEDED"}
        self.submitted.append(dict(data))
        return {"task_id": task_id}

    def task_wait(self, task_id: str, *, timeout: int = 10, polling_interval: int = 10) -> bool:
        return task_id in self.tasks

    def get_task(self, task_id: str) -> dict[str, str]:
        return self.tasks[task_id]


def test_globus_transfer_moves_adapters_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_id, site_id = str(uuid.uuid4()), str(uuid.uuid4())
    server_root, site_root = tmp_path / "server-coll", tmp_path / "site-coll"
    fake = FakeTransferClient({server_id: server_root, site_id: site_root})
    exp = experiment(
        tmp_path,
        transport={
            "globus": {
                "collection": server_id,
                "path": "/crossfl",
                "local_path": str(server_root / "crossfl"),
            }
        },
        sites=[
            {"name": "alpha", "site": "local"},
            {
                "name": "far",
                "site": "polaris",
                "transport": {
                    "mode": "globus_transfer",
                    "globus": {
                        "collection": site_id,
                        "path": "/eagle/x",
                        "local_path": str(site_root / "eagle" / "x"),
                    },
                },
            },
        ],
    )
    t = Transport(plan_of(exp, {"alpha"}), tmp_path / "run-1", transfer_client=lambda: fake)
    adapter = adapter_to_bytes({"l.lora_A.weight": torch.ones(2, 2)})
    out = t.train("far", TASK, adapter, version=3)
    assert out.mode == "globus_transfer" and out.fn is tasks.train_round
    assert out.payload["adapter"] is None and out.bytes_down == len(adapter)
    assert TrainTask.from_wire(out.payload).inline_limit_bytes == 7_000_000
    assert Path(out.payload["adapter_path"]).read_bytes() == adapter  # arrived at the site
    item = fake.submitted[0]["DATA"][0]
    assert item["source_path"] == "/crossfl/run-1/global-v3.safetensors"
    assert item["destination_path"] == "/eagle/x/run-1/global-v3.safetensors"
    assert fake.submitted[0]["verify_checksum"] is True
    # the site writes its result where the task said; the server fetches it back
    result_at_site = Path(out.payload["result_path"])
    result_at_site.parent.mkdir(parents=True, exist_ok=True)
    result_at_site.write_bytes(adapter + b"")
    incoming = t.receive(
        "far", TrainResult.model_construct(adapter=None, adapter_path=str(result_at_site)), out
    )
    assert (
        incoming.adapter == adapter
        and incoming.bytes_up == len(adapter)
        and len(fake.submitted) == 2
    )
    # a path that starts with the transfer directory but climbs out of it is refused unread
    escape = f"{result_at_site.parent}/../../../../etc/passwd"
    assert escape.startswith("/".join(out.payload["result_path"].split("/")[:-2]))
    with pytest.raises(ResultRefused, match="not the result file its task gave"):
        t.receive("far", TrainResult.model_construct(adapter=None, adapter_path=escape), out)
    assert len(fake.submitted) == 2  # nothing was fetched for it
    # the same global version goes to a site once
    t.train("far", TASK, adapter, version=3)
    assert len(fake.submitted) == 2
    # a transfer that does not succeed is an error the driver records (and retries as a system failure)
    failing = FakeTransferClient({server_id: server_root, site_id: site_root})
    failing.get_task = lambda task_id: {"status": "FAILED"}  # type: ignore[method-assign]
    mover = GlobusMover(failing, exp.transport.globus, timeout_s=5)
    with pytest.raises(TransferFailed, match="FAILED"):
        mover.send(exp.sites[1].transport.globus, "run-1/global-v3.safetensors", "again")


def test_new_experiment_fields_validate(tmp_path: Path) -> None:
    exp, _ = load_experiment(ROOT / "deploy" / "experiments" / "local-async.yaml")
    assert exp.strategy.name == "fedasync" and len(exp.sites) == 3
    assert {s.training.local_steps for s in exp.sites} == {10, 30, 60}
    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "local-demo.yaml").read_text())
    bad = [
        ({"quorum": {"min_clients": 4}}, "quorum.min_clients"),
        ({"transport": {"mode": "ftp"}}, "transport.mode"),
        ({"transport": {"inline_limit_mb": 12}}, "transport.inline_limit_mb"),
        ({"faults": {"retries": -1}}, "faults.retries"),
        ({"driver": "sometimes"}, "driver"),
        (
            {"sites": [{"name": "a", "site": "local", "training": {"local_step": 3}}]},
            "sites[a].training.local_step",
        ),
        (
            {"sites": [{"name": "a", "site": "local", "transport": {"mode": "globus_transfer"}}]},
            "sites[a].transport.globus",
        ),
    ]
    for change, field in bad:
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({**raw, **change}))
        with pytest.raises(UserError) as info:
            load_experiment(path)
        assert info.value.field == field, (change, info.value)


def test_driver_follows_the_strategy_unless_told(tmp_path: Path) -> None:
    assert driver_kind(experiment(tmp_path)) == "sync"
    assert driver_kind(experiment(tmp_path, strategy={"name": "fedbuff"})) == "async"
    assert driver_kind(experiment(tmp_path, driver="async")) == "async"
    with pytest.raises(UserError) as info:
        driver_kind(experiment(tmp_path, strategy={"name": "fedasync"}, driver="sync"))
    assert info.value.field == "driver"
    with pytest.raises(UserError) as info:
        driver_kind(experiment(tmp_path, max_updates=10))
    assert info.value.field == "max_updates"
    assert (
        driver_kind(experiment(tmp_path, strategy={"name": "fedbuff"}, max_updates=10)) == "async"
    )


def test_cli_resume_and_report_of_a_missing_run_are_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, CROSSFL_ROOT=str(tmp_path))
    for args in (["resume", "no-such-run"], ["report", "no-such-run", "other"]):
        proc = subprocess.run(
            [sys.executable, "-m", "crossfl", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout and "no run directory" in proc.stderr


# ------------------------------------------------------------------------------ engine processes


def sleeper() -> subprocess.Popen[bytes]:
    """A process that runs until it is ended, in a session of its own (as a worker pool is)."""
    return subprocess.Popen(["sleep", "1000"], start_new_session=True)


def test_a_dead_runs_processes_are_reaped_and_a_recycled_pid_is_spared(tmp_path: Path) -> None:
    from crossfl.server import reaper

    server, engine, stranger = sleeper(), sleeper(), sleeper()
    try:
        server_ref = reaper.ProcessRef.of(server.pid, "server")
        engine_ref = reaper.ProcessRef.of(engine.pid, "workers", "east")
        stranger_ref = reaper.ProcessRef.of(stranger.pid, "workers", "west")
        assert server_ref and engine_ref and stranger_ref and engine_ref.find() is not None
        # the pid a record names, now held by a process that started later: not the same one
        recycled = stranger_ref.model_copy(update={"started": stranger_ref.started - 60})
        other_program = engine_ref.model_copy(update={"exe": "/usr/bin/python3"})
        assert recycled.find() is None and other_program.find() is None
        record = reaper.ProcessRecord(server=server_ref, engines=[engine_ref, recycled])
        record.save(tmp_path)
        assert reaper.reap(tmp_path) == 0 and engine.poll() is None  # its server lives: left alone
        server.kill()
        server.wait()
        assert reaper.reap_dead_runs(tmp_path.parent) == {tmp_path.name: 1}
        assert engine.wait(timeout=60) is not None  # ended (SIGTERM)
        assert stranger.poll() is None, "a recycled pid of another process was signalled"
        assert not (tmp_path / reaper.RECORD).exists()
    finally:
        for p in (server, engine, stranger):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_the_watchdog_ends_the_engines_when_the_server_dies(tmp_path: Path) -> None:
    from crossfl.server import reaper

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    engine = sleeper()
    try:
        server_ref = reaper.ProcessRef.of(server.pid, "server")
        engine_ref = reaper.ProcessRef.of(engine.pid, "interchange", "east")
        assert server_ref and engine_ref
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "crossfl.server.reaper", str(tmp_path), str(server.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # the record names the watchdog too (a later run ends a dead run's watchdog; this one
        # must not end itself before it has done its work)
        reaper.ProcessRecord(
            server=server_ref,
            watchdog=reaper.ProcessRef.of(watchdog.pid, "watchdog"),
            engines=[engine_ref],
        ).save(tmp_path)
        server.kill()  # kill -9: no shutdown of anything
        server.wait()
        out, _ = watchdog.communicate(timeout=120)
        assert watchdog.returncode == 0 and "ended 1 process" in out, out
        assert engine.wait(timeout=60) is not None
        assert not (tmp_path / reaper.RECORD).exists()
    finally:
        for p in (server, engine):
            p.kill()
            p.wait()


def test_shard_is_asked_for_per_experiment_and_per_site(tmp_path: Path) -> None:
    """training.shard reaches every task; a site entry's own training.shard wins."""
    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "local-demo.yaml").read_text())
    raw["training"] = {**raw.get("training", {}), "shard": "always"}
    raw["sites"][1]["training"] = {**raw["sites"][1].get("training", {}), "shard": "never"}
    plan = plan_of(Experiment.model_validate(raw), {"alpha", "beta", "gamma"})
    shards = {
        s.name: plan.train_task(s.name, "/d", plan.client_plan(s.name), 1).shard
        for s in plan.experiment.sites
    }
    assert shards == {"alpha": "always", "beta": "never", "gamma": "always"}
