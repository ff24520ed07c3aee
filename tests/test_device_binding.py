"""Device binding for every site, from the real parts: the rendered user config as the endpoint
loads it, its worker_init run by bash, the container runtime's environment rules, and Parsl's
own process_worker_pool `worker()` pinning each worker (testkit/device_semantics.py). Under each
vendor's documented semantics, every worker sees exactly one device, its own, and runs on the
CPUs nearest it. The batch ranks (smoke.sh) get the same variables the workers get.

Frontier before this fix (no srun -c, no cpu_affinity, no client fix of Parsl issue 3858) is
computed the same way and fails: only worker 0 sees a GCD, and all eight share one CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from testkit.device_semantics import binding_problems, visible, worker_views

from crossfl import render, sites
from crossfl.client import device, tasks
from crossfl.errors import UserError
from crossfl.render.shell import PARSL_ACCELERATOR_ENV, PARSL_FIXED_ENV, bind_wrapper
from golden_sites import golden_site

SITES = ["frontier", "aurora", "polaris", "perlmutter", "local-slurm"]


def site(name: str) -> sites.Site:
    """The site with one worker pinned per device (the facilities' MPI engine has one worker
    per pilot, whose ranks tests/test_rank_binding.py checks)."""
    return golden_site(name, "per-device")


def engine_of(s: sites.Site, tmp_path: Path):
    out = render.render_site(s, tmp_path / "sites")
    return render.load_user_config(
        (out / "endpoint" / "user_config.example.yaml").read_text()
    ).engine


@pytest.mark.parametrize("name", SITES)
def test_each_worker_sees_one_device_and_its_cpus(name, tmp_path, stub_interfaces):
    s = site(name)
    workers = worker_views(s, engine_of(s, tmp_path), tmp_path)
    assert len(workers) == s.accelerator.devices_per_node
    assert binding_problems(s, workers) == []
    assert sorted(w.devices[0] for w in workers) == sorted(s.accelerator.device_ids)


def test_frontier_workers_get_their_own_gcd(tmp_path, stub_interfaces):
    s = site("frontier")
    workers = worker_views(s, engine_of(s, tmp_path), tmp_path)
    assert [w.env["ROCR_VISIBLE_DEVICES"] for w in workers] == [str(i) for i in range(8)]
    assert all("CUDA_VISIBLE_DEVICES" not in w.env for w in workers)  # dropped by the client
    assert workers[0].cpus == list(range(49, 56))  # GCD 0 sits on L3 region 6 (cores 48-55)
    assert workers[4].cpus == list(range(1, 8))  # GCD 4 on region 0, core 0 reserved


def test_aurora_workers_get_one_flat_tile(tmp_path, stub_interfaces):
    s = site("aurora")
    workers = worker_views(s, engine_of(s, tmp_path), tmp_path)
    assert [w.env["ZE_AFFINITY_MASK"] for w in workers] == [str(i) for i in range(12)]
    assert {w.env["ZE_FLAT_DEVICE_HIERARCHY"] for w in workers} == {"FLAT"}
    assert {w.env["TMPDIR"] for w in workers} == {"/tmp"}  # ALCF's AF_UNIX fix
    assert not {0, 52, 104, 156} & {c for w in workers for c in w.cpus}


def test_frontier_before_the_fix_fails(tmp_path, stub_interfaces):
    """Frontier as it was: the pilot's srun had no -c, no cpu_affinity, and the client took
    what Parsl set (ROCR_VISIBLE_DEVICES=k and CUDA_VISIBLE_DEVICES=k)."""
    s = site("frontier").model_copy(deep=True)  # not validated again: the old values stand
    s.endpoint.cpu_affinity = "none"
    s.cpus_per_node = None
    engine = engine_of(s, tmp_path)
    engine.executor.provider.launcher.overrides = ""  # srun --ntasks 1 without -c
    workers = worker_views(s, engine, tmp_path, client_fix=False)
    assert [w.devices for w in workers] == [["0"]] + [[]] * 7  # only worker 0 sees a GCD
    assert {tuple(w.cpus) for w in workers} == {(1,)}  # eight workers on one CPU
    problems = binding_problems(s, workers)
    assert (
        "worker 1 sees [] (CUDA_VISIBLE_DEVICES=1 ROCR_VISIBLE_DEVICES=1 ZE_AFFINITY_MASK=1)"
    ) in problems
    # The client's fix alone gives each worker its GCD; the CPUs still need -c and the list.
    fixed = worker_views(s, engine, tmp_path, client_fix=True)
    assert [w.devices for w in fixed] == [[str(i)] for i in range(8)]
    assert any("not on those nearest" in p for p in binding_problems(s, fixed))


def test_aurora_composite_with_flat_ids_would_fail(tmp_path, stub_interfaces):
    """One convention: FLAT ids under COMPOSITE (the old worker_env) would show whole GPUs."""
    s = site("aurora").model_copy(deep=True)
    s.accelerator.env = {"ZE_FLAT_DEVICE_HIERARCHY": "COMPOSITE"}
    workers = worker_views(s, engine_of(s, tmp_path), tmp_path)
    assert binding_problems(s, workers)


@pytest.mark.parametrize("name", [n for n in SITES if site(n).accelerator.bind == "local-rank"])
def test_batch_ranks_get_what_the_workers_get(name, tmp_path, stub_interfaces):
    """Where the kit binds ranks itself (`accelerator.bind: local-rank`), smoke.sh's bind_rank
    exports, for rank i, the variables Parsl's worker() set for worker i (read from the real
    worker above), with the same values."""
    s = site(name)
    workers = worker_views(s, engine_of(s, tmp_path), tmp_path, client_fix=False)
    lines = bind_wrapper(s)
    exported = dict(re.findall(r'(\w+)="?([^" ]*)"?', lines[-1].removeprefix("export ")))
    devices = lines[0].removeprefix("devices=(").removesuffix(")").split()
    assert lines[1] == f"rank=${{{s.local_rank_env}:-0}}"
    for i, w in enumerate(workers):
        ours = {
            k: (devices[i] if v == "$device" else v)
            for k, v in exported.items()
            if k != "CROSSFL_LOCAL_RANK"
        }
        parsl = {k: w.env[k] for k in (*PARSL_ACCELERATOR_ENV, *PARSL_FIXED_ENV)}
        assert ours == parsl, i
    local_rank = {"aurora": "PALS_LOCAL_RANKID", "polaris": "PMI_LOCAL_RANK"}
    assert s.local_rank_env == local_rank.get(name, "SLURM_LOCALID")


# --- the client: the site's device or one line naming what it saw -----------------------------

GPU_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "ZE_FLAT_DEVICE_HIERARCHY",
    "ONEAPI_DEVICE_SELECTOR",
    device.ENV_VAR,
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in GPU_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_gpu_site_never_runs_on_the_cpu(clean_env):
    clean_env.setenv("ROCR_VISIBLE_DEVICES", "3")
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(UserError) as info:
        device.select_device("rocm")
    line = info.value.render()
    assert line.startswith(
        "expected a rocm device; torch sees none (ROCR_VISIBLE_DEVICES=3 "
        "CUDA_VISIBLE_DEVICES=3 HIP_VISIBLE_DEVICES=unset; torch "
        f"{torch.__version__}) (fix: "
    )
    assert "\n" not in line
    with pytest.raises(
        UserError,
        match="expected a cuda device; torch sees none "
        r"\(CUDA_VISIBLE_DEVICES=3; torch",
    ):
        device.select_device("cuda")
    clean_env.setenv("ZE_AFFINITY_MASK", "5")
    with pytest.raises(
        UserError,
        match="expected a xpu device; torch sees none "
        r"\(ZE_FLAT_DEVICE_HIERARCHY=unset ZE_AFFINITY_MASK=5 ",
    ):
        device.select_device("xpu")
    assert device.select_device("cpu").type == "cpu"  # the catalog lists no accelerator
    assert device.select_device(None).type == "cpu"  # nothing expected: as before


def test_the_training_task_fails_before_loading_anything(clean_env, tmp_path):
    task = {
        "model_path": str(tmp_path / "no-model"),
        "data_path": str(tmp_path / "no-data"),
        "local_steps": 1,
        "batch_size": 1,
        "lr": 0.1,
        "expect_device": "rocm",
    }
    with pytest.raises(UserError, match="^expected a rocm device; torch sees none"):
        tasks.train_round(task)
    with pytest.raises(UserError, match="expect_device"):
        tasks.train_round({**task, "expect_device": "tpu"})


def test_the_hip_fix_gives_each_worker_its_gcd(clean_env):
    """On torch's HIP build, the client drops CUDA_VISIBLE_DEVICES where it repeats
    ROCR_VISIBLE_DEVICES (Parsl issue 3858) before torch looks for a GPU."""
    gcds = [str(i) for i in range(8)]

    def hip_device_count() -> int:  # HIP's reading of the variables, at initialization
        return len(visible("rocm", dict(os.environ), gcds) or [])

    clean_env.setattr(torch.version, "hip", "7.2.0", raising=False)
    clean_env.setattr(torch.cuda, "is_available", lambda: hip_device_count() > 0)
    clean_env.setenv("ROCR_VISIBLE_DEVICES", "5")
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert hip_device_count() == 0  # what Parsl's variables give HIP (issue 3858)
    chosen = device.select_device("rocm")
    assert (chosen.type, device.backend_name(chosen)) == ("cuda", "rocm")
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and os.environ["ROCR_VISIBLE_DEVICES"] == "5"
    env = {"ROCR_VISIBLE_DEVICES": "0,1", "HIP_VISIBLE_DEVICES": "1"}
    assert device.hip_relative_visibility(env) == [] and env["HIP_VISIBLE_DEVICES"] == "1"


@pytest.mark.slow
def test_devices_command_prints_one_line_per_rank(clean_env, tmp_path):
    env = {**os.environ, "CROSSFL_LOCAL_RANK": "3", "ROCR_VISIBLE_DEVICES": "3"}
    cmd = [sys.executable, "-m", "crossfl.client", "devices"]
    ok = subprocess.run(
        [*cmd, "--expect", "cpu"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    (line,) = ok.stdout.splitlines()
    report = json.loads(line)
    assert report["local_rank"] == "3" and report["device"] == "cpu" and report["cpus"]
    assert report["visible"] == {"ROCR_VISIBLE_DEVICES": "3"}
    bad = subprocess.run(
        [*cmd, "--expect", "rocm"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 1
    (line,) = bad.stdout.splitlines()
    assert json.loads(line)["error"].startswith(
        "expected a rocm device; torch sees none (ROCR_VISIBLE_DEVICES=3 "
    )


def chem_lora():
    from crossfl.server.experiment import Experiment

    path = Path(__file__).resolve().parents[1] / "deploy" / "experiments" / "chem-lora.yaml"
    return path, Experiment.model_validate(yaml.safe_load(path.read_text()))


def test_the_server_tells_the_client_what_the_site_expects():
    from crossfl.server.plan import RunPlan, SitePlan
    from crossfl.server.strategies.base import ClientPlan

    path, exp = chem_lora()
    plans = {
        e.name: SitePlan(
            name=e.name,
            catalog=sites.load_site(e.site),
            runs_here=False,
            model_path=e.model_path,
            data_path=e.data_path,
            shared_dir=None,
            nodes=1,
            user_options=e.user_options,
        )
        for e in exp.sites
    }
    plan = RunPlan(
        experiment=exp,
        source=path,
        sites=plans,
        driver="sync",
        validation_path=exp.data.validation,
        train_path=None,
    )
    expected = {"frontier": "rocm", "aurora": "xpu", "polaris": "cuda", "perlmutter": "cuda"}
    for name, kind in expected.items():
        task = plan.train_task(name, "/d.jsonl", ClientPlan(local_steps=1, lr=0.1), 0)
        assert task.to_wire()["expect_device"] == kind
    assert plan.eval_task().expect_device == "rocm"  # evaluated at frontier
    assert sites.load_site("local").expect_device == "cpu"
    assert sites.load_site("local-slurm").expect_device is None  # stand-in GPUs, CPU torch


def test_a_run_refuses_a_facility_request_before_any_task(monkeypatch):
    """`crossfl run` plans every site first: a facility's options meet its published rules
    there, in one line, before an executor opens or a task is sent."""
    import crossfl.state
    from crossfl.server import plan

    monkeypatch.setattr(crossfl.state, "require_endpoint_id", lambda site: "0" * 32)
    _, exp = chem_lora()
    entry = exp.site_entry("polaris")
    entry.user_options = {**entry.user_options, "queue": "debug"}  # 2 h on debug
    with pytest.raises(sites.RequestRefused) as info:
        plan.plan_site(exp, "polaris")
    assert info.value.render().startswith(
        "polaris: queue debug allows at most 01:00:00; asked 02:00:00 (fix: "
    )
