"""A training task over several ranks: launcher environments, the shard rule, and on CPU
(gloo) the equivalences: 2 ranks with per-rank batch b equal 1 rank with batch 2b, sharded equals
unsharded, through torch's launcher, the real local engine and `srun -n 2` on the real Slurm."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from crossfl.client import distributed, tasks
from crossfl.client.adapter_io import adapter_from_bytes
from crossfl.client.distributed import World, first_host, rank_device, rank_env, shard
from crossfl.client.encoding import encode_example
from crossfl.client.launch import resolve_ranks
from crossfl.client.launcher_env import rank_command
from crossfl.client.sharding import should_shard
from crossfl.client.telemetry import device_busy_fraction
from crossfl.errors import UserError
from crossfl.tiny_model import TinyModelSpec, build_tiny
from test_client import chem_records, write_jsonl

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
TOL = 1e-5
B = 3  # per-rank batch
STEPS = 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ranks")


@pytest.fixture(scope="module")
def data(workdir: Path) -> Path:
    return write_jsonl(workdir / "train.jsonl", chem_records("train"))


@pytest.fixture(scope="module")
def model(workdir: Path, data: Path) -> Path:
    spec = TinyModelSpec(
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position=128,
        pretrain_steps=20,
        pretrain_batch=8,
        pretrain_seq_len=32,
        seed=0,
        threads=1,
    )
    return Path(build_tiny(data, workdir / "tiny", spec).out)


def train_task(model: Path, data: Path, **changes: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "model_path": str(model),
        "data_path": str(data),
        "local_steps": STEPS,
        "batch_size": B,
        "lr": 1e-2,
        "max_length": 64,
        "lora": dict(LORA),
        "seed": 3,
        "round": 1,
        "torch_threads": 1,
    }
    task.update(changes)
    return task


def max_diff(a: bytes | str, b: bytes | str) -> float:
    """Between two adapters, as bytes or as a result's wire carries them (base64 text)."""
    x, y = (adapter_from_bytes(base64.b64decode(v) if isinstance(v, str) else v) for v in (a, b))
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


@pytest.fixture(scope="module")
def one_rank(model: Path, data: Path) -> dict[str, Any]:
    """The reference: one process, batch 2b."""
    return tasks.train_round(train_task(model, data, batch_size=2 * B))


# ------------------------------------------------------------------ pure parts


def test_shard_rule() -> None:
    gib = 2**30
    assert should_shard("auto", 140 * gib, 80 * gib, ranks=8)  # a 70B model in bf16 on A100s
    assert not should_shard("auto", 14 * gib, 80 * gib, ranks=8)  # 7B fits
    assert should_shard("auto", 41 * gib, 80 * gib, ranks=4)  # over half: no room to train
    assert not should_shard("auto", 140 * gib, 80 * gib, ranks=1)  # nothing to shard across
    assert should_shard("always", 1, 80 * gib, ranks=2)
    assert not should_shard("never", 140 * gib, 80 * gib, ranks=8)


def test_first_host_of_a_hostlist() -> None:
    assert first_host("localhost") == "localhost"
    assert first_host("nid[001-004,010],login1") == "nid001"
    assert first_host("frontier[08812,08815-08816]") == "frontier08812"
    assert first_host("rack[1-2]-n[07-08]") == "rack1-n07"
    assert first_host("x1000c0s0b0n0,x1000c0s0b0n1") == "x1000c0s0b0n0"


@pytest.mark.parametrize(
    ("env", "want"),
    [
        (
            {
                "TORCHELASTIC_RUN_ID": "r",
                "RANK": "1",
                "WORLD_SIZE": "2",
                "LOCAL_RANK": "1",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29400",
            },
            ("torchelastic", 1, 2, 1, 2, "127.0.0.1", 29400),
        ),
        (
            {
                "SLURM_PROCID": "5",
                "SLURM_STEP_ID": "0",
                "SLURM_STEP_NUM_TASKS": "8",
                "SLURM_NTASKS": "16",
                "SLURM_LOCALID": "1",
                "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
                "SLURM_STEP_NODELIST": "frontier[00012-00013]",
                "SLURM_JOB_ID": "7",
            },
            ("slurm", 5, 8, 1, 4, "frontier00012", None),
        ),
        (
            {
                "PMI_RANK": "13",
                "PMI_SIZE": "24",
                "PALS_LOCAL_RANKID": "1",
                "PALS_RANKID": "13",
                "PMI_LOCAL_SIZE": "12",
                "PBS_NODEFILE": "NODEFILE",
                "PBS_JOBID": "1.aurora",
            },
            ("pals", 13, 24, 1, 12, "x4000c0s0b0n0", None),
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "2",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
                "MASTER_ADDR": "node1",
            },
            ("openmpi", 2, 4, 0, 2, "node1", None),
        ),
        (
            {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
            ("mpich", 1, 2, 1, 2, "localhost", None),
        ),
        (
            {
                "PMI_RANK": "3",
                "PMI_SIZE": "4",
                "PARSL_MPI_NODELIST": "n1,n2",
                "PMI_LOCAL_RANK": "1",
                "PMI_LOCAL_SIZE": "2",
            },
            ("mpich", 3, 4, 1, 2, "n1", None),
        ),
    ],
)
def test_rank_env_of_each_launcher(tmp_path: Path, env: dict[str, str], want: tuple) -> None:
    if "PBS_NODEFILE" in env:
        (tmp_path / "nodes").write_text("x4000c0s0b0n0\nx4000c0s0b0n0\nx4000c0s1b0n0\n")
        env = {**env, "PBS_NODEFILE": str(tmp_path / "nodes")}
    place = rank_env(env)
    assert place is not None
    got = (
        place.launcher,
        place.rank,
        place.size,
        place.local_rank,
        place.local_size,
        place.master_addr,
    )
    assert got == want[:6]
    if want[6] is not None:
        assert place.master_port == want[6] and place.init_method == "env://"
    else:
        assert (
            distributed.PORT_BASE
            <= place.master_port
            < distributed.PORT_BASE + distributed.PORT_SPAN
        )
        assert place.init_method == f"tcp://{place.master_addr}:{place.master_port}"
        assert rank_env(env) == place  # every rank of one launch computes the same port


def test_no_launcher_and_bad_launchers() -> None:
    # A batch script's own step (no srun): SLURM_PROCID without SLURM_STEP_ID is no rank.
    assert rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "PATH": "/bin"}) is None
    with pytest.raises(UserError, match="rank 4 of 4"):
        rank_env({"PMI_RANK": "4", "PMI_SIZE": "4"})
    with pytest.raises(UserError, match="MASTER_ADDR"):
        rank_env(
            {
                "OMPI_COMM_WORLD_RANK": "0",
                "OMPI_COMM_WORLD_SIZE": "4",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            }
        )


def test_device_per_rank_and_backend() -> None:
    assert rank_device("cuda", 3, visible=4) == torch.device("cuda", 3)
    assert rank_device("xpu", 5, visible=1) == torch.device("xpu", 0)  # bound by the launcher
    assert rank_device("cpu", 1, visible=1) == torch.device("cpu")
    with pytest.raises(UserError, match="at most 4"):
        rank_device("cuda", 4, visible=4)
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for("cuda") == "nccl"  # RCCL under the same name on ROCm


def test_ranks_slice_each_global_batch_in_order() -> None:
    idx = [9, 4, 7, 1, 0, 5, 3]
    parts = [shard(idx, World(rank=r, size=3)) for r in range(3)]
    assert sum(parts, []) == idx and [len(p) for p in parts] == [2, 2, 3]


def test_rank_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_DEVICE", "cpu")
    assert resolve_ranks("auto") == 1 and resolve_ranks(2) == 2
    monkeypatch.setenv("CROSSFL_DEVICE", "cpu:0")
    with pytest.raises(UserError, match="pins one device"):
        resolve_ranks(2)


def test_busy_fraction_and_rank_command() -> None:
    assert device_busy_fraction(accelerator_s=300.0, window_s=100.0, devices_held=4) == 0.75
    assert device_busy_fraction(1.0, 0.0, 4) == 0.0
    assert (
        rank_command("t.json", "o.json")
        == "python -m crossfl.client run-task --distributed t.json o.json"
    )


def test_bad_ranks_field_is_a_user_error(model: Path, data: Path) -> None:
    with pytest.raises(UserError, match="TrainTask.ranks_per_node"):
        tasks.train_round(train_task(model, data, ranks_per_node=0))
    with pytest.raises(UserError, match="TrainTask.shard"):
        tasks.train_round(train_task(model, data, shard="sometimes"))
    with pytest.raises(UserError, match="fewer than its 2 ranks"):
        tasks.train_round(train_task(model, data, ranks_per_node=2, max_samples=1))


# ------------------------------------------------------------------ equivalence on CPU ranks


def test_answers_differ_in_length(model: Path) -> None:
    """What makes the loss normalization matter: ranks hold different target-token counts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lengths = {
        len(e.ids) - e.prompt_len
        for e in (encode_example(tok, r["input"], r["output"], 64) for r in chem_records("t"))
    }
    assert len(lengths) > 3


def test_one_rank_result_carries_telemetry(one_rank: dict[str, Any]) -> None:
    assert one_rank["ranks"] == 1 and one_rank["nodes"] == 1 and one_rank["sharded"] is False
    assert one_rank["device_type"] == "cpu" and len(one_rank["device_names"]) == 1
    assert one_rank["dist_backend"] is None
    assert 0 < one_rank["accelerator_s"] <= one_rank["train_window_s"] <= one_rank["wall_s"]


def test_explicit_one_rank_is_todays_path(
    model: Path, data: Path, one_rank: dict[str, Any]
) -> None:
    again = tasks.train_round(
        train_task(model, data, batch_size=2 * B, ranks_per_node=1, shard="always")
    )
    assert again["adapter"] == one_rank["adapter"]


@pytest.fixture(scope="module")
def two_ranks(model: Path, data: Path) -> dict[str, Any]:
    return tasks.train_round(train_task(model, data, ranks_per_node=2, shard="never"))


@pytest.mark.slow
def test_two_ranks_equal_one_rank_with_the_doubled_batch(
    model: Path, data: Path, two_ranks: dict[str, Any], one_rank: dict[str, Any]
) -> None:
    assert two_ranks["steps"] == one_rank["steps"] == STEPS
    assert max_diff(two_ranks["adapter"], one_rank["adapter"]) < TOL
    assert two_ranks["train_loss"] == pytest.approx(one_rank["train_loss"], abs=TOL)
    # ... while the last steps moved the adapter far more than that.
    shorter = tasks.train_round(train_task(model, data, batch_size=2 * B, local_steps=STEPS - 1))
    assert max_diff(shorter["adapter"], one_rank["adapter"]) > 100 * TOL


@pytest.mark.slow
def test_two_ranks_report_one_adapter_and_their_devices(two_ranks: dict[str, Any]) -> None:
    assert two_ranks["num_samples"] == len(chem_records("train"))
    assert two_ranks["ranks"] == 2 and two_ranks["nodes"] == 1
    assert two_ranks["dist_backend"] == "gloo" and two_ranks["device_type"] == "cpu"
    assert len(two_ranks["device_names"]) == 2 and two_ranks["sharded"] is False
    assert two_ranks["devices_per_rank"] == 1 and two_ranks["cache_hit"] is False
    assert 0 < two_ranks["train_window_s"] < two_ranks["wall_s"]
    assert 0 < two_ranks["accelerator_s"] <= 2 * two_ranks["train_window_s"]


@pytest.mark.slow
def test_sharded_equals_unsharded_on_two_ranks(
    model: Path, data: Path, two_ranks: dict[str, Any]
) -> None:
    sharded = tasks.train_round(train_task(model, data, ranks_per_node=2, shard="always"))
    assert sharded["sharded"] is True and sharded["ranks"] == 2
    assert max_diff(sharded["adapter"], two_ranks["adapter"]) < TOL


@pytest.mark.slow
def test_bad_input_met_in_the_ranks_is_one_user_error(model: Path, data: Path) -> None:
    with pytest.raises(UserError, match="target_modules"):
        tasks.train_round(
            train_task(model, data, ranks_per_node=2, lora={**LORA, "target_modules": ["nope"]})
        )


# ------------------------------------------------------------------ the real engine and Slurm


@pytest.mark.slow
def test_local_engine_worker_runs_two_ranks(
    model: Path, data: Path, one_rank: dict[str, Any], tmp_path: Path
) -> None:
    """One worker of the `local` site's real GlobusComputeEngine holds two CPU "devices"."""
    from crossfl.endpoints import LocalEngineExecutor
    from crossfl.render import render_site, render_user_config

    site_dir = render_site("local", out_root=tmp_path / "sites")
    executor = LocalEngineExecutor("ranks", render_user_config(site_dir, {}), tmp_path / "engine")
    try:
        result = executor.submit(
            tasks.train_round, train_task(model, data, ranks_per_node=2)
        ).result(timeout=600)
    finally:
        executor.shutdown()
    assert result["ranks"] == 2 and result["num_samples"] == len(chem_records("train"))
    assert max_diff(result["adapter"], one_rank["adapter"]) < TOL


def test_srun_two_ranks_through_the_entry_point(
    slurm_cluster, model: Path, data: Path, one_rank: dict[str, Any], tmp_path: Path
) -> None:
    task = {"task": "train_round", **train_task(model, data)}
    (tmp_path / "task.json").write_text(json.dumps(task))
    argv = [
        "srun",
        "-n",
        "2",
        sys.executable,
        "-m",
        "crossfl.client",
        "run-task",
        "--distributed",
        "task.json",
        "out.json",
    ]
    proc = subprocess.run(
        argv, cwd=tmp_path, env=slurm_cluster.env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["ranks"] == 2 and result["dist_backend"] == "gloo"
    assert result["num_samples"] == len(chem_records("train"))
    adapter = (tmp_path / result["adapter_path"]).read_bytes()
    assert max_diff(adapter, one_rank["adapter"]) < TOL


@pytest.mark.slow
def test_distributed_entry_point_needs_a_launcher(model: Path, data: Path, tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text(
        json.dumps({"task": "train_round", **train_task(model, data)})
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PALS_", "TORCHELASTIC_"))
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crossfl.client",
            "run-task",
            "--distributed",
            "task.json",
            "out.json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--distributed" in proc.stderr and "srun" in proc.stderr
    assert "error" in json.loads((tmp_path / "out.json").read_text())


# ------------------------------------------------------------------ device-busy, a known case


class _KnownBusy(torch.nn.Module):
    """A "model" whose every step keeps the CPU busy for exactly `cpu_s` CPU-seconds (a spin
    on the process's CPU clock) and then leaves it idle for `idle_s` (a sleep, as a rank
    waiting for a peer or the scheduler would)."""

    def __init__(self, cpu_s: float, idle_s: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cpu_s, self.idle_s = cpu_s, idle_s

    def forward(self, **_: Any) -> Any:
        import time
        from types import SimpleNamespace

        end = time.process_time() + self.cpu_s
        while time.process_time() < end:
            pass
        time.sleep(self.idle_s)
        return SimpleNamespace(loss=(self.w * 0.0).sum() + 1.0)


def test_busy_counts_what_the_device_did_not_the_waits(model: Path, data: Path) -> None:
    """Every step is 0.05 CPU-seconds of work and 0.05 s of waiting: the rank's device-seconds
    are the work (0.05 per step, whatever the machine's load stretches the wall to), not the
    step's wall as the old measure counted. Measured on the CPU clock, so load cannot move it."""
    from crossfl.client.contract import TrainTask
    from crossfl.client.train import Example, run_training

    steps, cpu_s, idle_s = 4, 0.05, 0.05
    spec = TrainTask.from_wire(train_task(model, data, local_steps=steps, batch_size=1))
    examples = [Example(ids=(1, 2, 3, 4), prompt_len=2)] * 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the rank's device: one core
    try:
        world = distributed.single(torch.device("cpu"))
        done = run_training(_KnownBusy(cpu_s, idle_s), examples, spec, 0, world)
    finally:
        torch.set_num_threads(threads)
    assert len(done.losses) == steps
    assert steps * cpu_s <= done.busy_s < steps * (cpu_s + 0.02)  # the work, not the waits
    assert done.window_s >= steps * (cpu_s + idle_s)  # the waits are in the window
    busy = device_busy_fraction(done.busy_s, done.window_s, devices_held=1)
    assert busy <= 0.6  # 0.5 when the machine is idle; less when other work takes the core


def test_the_collective_smoke_builds_the_tiny_models_shape() -> None:
    """The collective's DDP step runs the tiny model's shape without importing its builder
    (not in the worker image): the two stay equal."""
    from crossfl.client.collective import TINY_SHAPE

    spec = TinyModelSpec()
    assert TINY_SHAPE == {k: getattr(spec, k) for k in TINY_SHAPE}


def test_run_record_uses_the_training_window() -> None:
    """The server's busy figure is the same measure: device-seconds over (devices held x the
    training loop); the task's start-up (wall - window) is charged in node-hours, not in it."""
    from crossfl.client.contract import TrainResult, TrainTimings
    from crossfl.server.records import TaskRecord, account

    result = TrainResult(
        adapter=b"x",
        num_samples=1,
        train_loss=1.0,
        first_loss=1.0,
        steps=1,
        timings=TrainTimings(load_s=0.0, train_s=2.0, serialize_s=0.0),
        started_at=0.0,
        finished_at=20.0,
        device="cpu",
        host="h",
        pid=1,
        cache_hit=False,
        ranks=2,
        accelerator_s=3.0,
        train_window_s=2.0,
        wall_s=20.0,
    )
    record = TaskRecord.model_construct(site="s")
    account(record, result, held_nodes=1, devices_per_node=0, local=True)
    assert record.devices_held == 2 and record.device_busy == pytest.approx(0.75)
    assert record.node_hours == pytest.approx(20.0 / 3600)
    old = result.model_copy(update={"train_window_s": 0.0})  # an older client: over its wall
    account(record, old, held_nodes=1, devices_per_node=0, local=True)
    assert record.device_busy == pytest.approx(3.0 / 40.0)


# ------------------------------------------------------------------ make gpu-check, its CPU path


@pytest.mark.slow  # `make gpu-check`: LoRA rounds and 2 gloo ranks in subprocesses
def test_gpu_check_runs_its_cpu_fallback() -> None:
    """`make gpu-check` has not run on a GPU here (none was lent): its CPU fallback runs the
    same steps (device selection, a LoRA round, the collective smoke on 2 gloo ranks, a round
    over all ranks) and prints each figure; the GPU path differs only in the device."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--steps", "2"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert out.splitlines()[0].startswith("gpu-check: CPU fallback (no NVIDIA GPU used: --cpu)")
    assert "1. device the client selects: cpu" in out
    assert "2. one LoRA round: 1 rank(s) on cpu" in out and "steps/s" in out
    ranks = [ln for ln in out.splitlines() if ln.startswith("3. rank ")]
    assert len(ranks) == 2 and all("(gloo)" in r and "all-reduce 16 MB ok" in r for r in ranks)
    assert all("GB/s bus" in r and "DDP step ok" in r for r in ranks)
    assert "4. one LoRA round over all: 2 rank(s) on cpu (gloo)" in out and "device-busy" in out
    assert out.rstrip().splitlines()[-1].startswith("gpu-check: ok in ")
