"""On a real one-node Slurm cluster: the rendered local-slurm batch scripts run, and the
GlobusComputeEngine built from the rendered config submits a real pilot job that runs a task."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path

import pytest
import yaml

from conftest import run_on_engine
from crossfl import render, sites
from crossfl.schedulers.launchers import LAUNCHERS

OVERRIDES = Path(__file__).parent / "golden" / "overrides" / "local-slurm.yaml"


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory) -> Path:
    site = sites.load_site("local-slurm", overrides=OVERRIDES)
    return render.render_site(site, tmp_path_factory.mktemp("sites"))


def _output(job_dir: Path, pattern: str) -> str:
    files = sorted(job_dir.glob(pattern))
    return "\n".join(p.read_text() for p in files)


def test_smoke_job_runs_one_rank_per_device(slurm_cluster, local_slurm, tmp_path):
    job = slurm_cluster.sbatch(local_slurm / "batch" / "smoke.sh", cwd=tmp_path)
    state, code = slurm_cluster.wait(job, timeout=150)
    out = _output(tmp_path, "crossfl-smoke-local-slurm-*.out")
    assert (state, code) == ("COMPLETED", "0:0"), out
    every = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    reports = [r for r in every if not r.get("collective")]
    assert len(reports) == 4, out  # one line per rank, one rank per (fake) GPU
    assert {r["host"] for r in reports} == {platform.node()}
    assert all(r["device"] == "cpu" for r in reports)  # the CPU build of torch here
    # Rank i (SLURM_LOCALID) got what Parsl gives worker i: CUDA_VISIBLE_DEVICES=i.
    seen = {r["rank"]: r["env"].split()[0] for r in reports}
    assert seen == {str(i): f"CUDA_VISIBLE_DEVICES={i}" for i in range(4)}, out
    # then the collective smoke: 2 ranks, gloo, a right all-reduce and equal DDP parameters
    coll = sorted((r for r in every if r.get("collective")), key=lambda r: r["rank"])
    assert [(r["rank"], r["world"], r["backend"]) for r in coll] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert all(r["all_reduce"]["ok"] and r["ddp"]["ok"] for r in coll), out
    assert all(r["all_reduce"]["busbw_gbs"] > 0 for r in coll), out
    assert len({r["ddp"]["params_sha256"] for r in coll}) == 1


def test_client_job(slurm_cluster, local_slurm, tmp_path):
    if importlib.util.find_spec("crossfl.client.__main__") is None:
        pytest.skip("crossfl.client has no `python -m crossfl.client run-task TASK OUT` entry yet")
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"task": "describe"}))
    job = slurm_cluster.sbatch(
        local_slurm / "batch" / "client.sh", str(task), "result.json", cwd=tmp_path
    )
    state, code = slurm_cluster.wait(job, timeout=150)
    out = _output(tmp_path, "crossfl-client-local-slurm-*.out")
    assert (state, code) == ("COMPLETED", "0:0"), out
    assert (tmp_path / "result.json").stat().st_size > 0


def test_engine_runs_a_task_through_a_pilot_job(slurm_cluster, local_slurm, tmp_path):
    text = render.render_user_config(local_slurm, {"walltime": "00:05:00"})
    provider_cfg = yaml.safe_load(text)["engine"]["provider"]
    assert provider_cfg["type"] == "SlurmProvider" and provider_cfg["partition"] == "debug"
    engine = render.load_user_config(text).engine
    # One worker's device, as Parsl's worker pool set it from available_accelerators.
    visible = run_on_engine(engine, tmp_path, os.getenv, "CUDA_VISIBLE_DEVICES", timeout=150)
    assert visible in {"0", "1", "2", "3"}
    pilots = [
        p.read_text()
        for p in (tmp_path / "submit_scripts").iterdir()
        if p.is_file() and "#SBATCH" in p.read_text()
    ]
    assert len(pilots) == 1, "expected one pilot job script"
    assert "#SBATCH --partition=debug" in pilots[0] and "--gpus-per-node=4" in pilots[0]


@pytest.mark.parametrize("name", ["frontier", "perlmutter"])
def test_facility_headers_pass_real_sbatch(slurm_cluster, name, tmp_path):
    """Real sbatch parses every #SBATCH line of the facility scripts (--test-only schedules
    nothing). The command line swaps in what this one-node cluster has: partition, GPU count."""
    import subprocess

    overrides = Path(__file__).parent / "golden" / "overrides" / f"{name}.yaml"
    out = render.render_site(sites.load_site(name, overrides=overrides), tmp_path / "sites")
    for script in sorted((out / "batch").glob("*.sh")):
        proc = subprocess.run(
            [
                "sbatch",
                "--test-only",
                "--partition=debug",
                "--nodes=1",  # the smoke job's collective asks 2 nodes of the facility
                "--gpus-per-node=4",
                "--ntasks-per-node=4",
                "--cpus-per-task=2",
                str(script),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=slurm_cluster.env(),
            timeout=30,
        )
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
        assert "to start at" in proc.stderr, proc.stderr


def test_slurm_start_estimate_from_sbatch_test_only(slurm_cluster, tmp_path):
    """The dispatch policy's start estimate, asked of real Slurm with a pilot's shape:
    `sbatch --test-only` schedules nothing (no node is held) and says when it would start."""
    import subprocess
    from datetime import datetime, timedelta

    from crossfl.schedulers.slurm import Slurm

    slurm = Slurm()
    line = slurm.start_test_command(
        nodes=1, walltime_s=3600, queue=slurm_cluster.partition, account=None
    )
    before = datetime.now()
    proc = subprocess.run(
        ["bash", "-c", line], capture_output=True, text=True, env=slurm_cluster.env(), timeout=30
    )
    start = slurm.parse_start(proc.stdout + proc.stderr, proc.returncode)
    assert start is not None, proc.stdout + proc.stderr
    # an idle cluster: now, give or take the clock's second and the controller's rounding
    assert abs(start - before) < timedelta(minutes=5)
    queue = subprocess.run(
        ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=slurm_cluster.env()
    )
    assert queue.stdout.strip() == ""  # nothing was submitted
    bad = slurm.start_test_command(nodes=99, walltime_s=60, queue="nope", account=None)
    proc = subprocess.run(
        ["bash", "-c", bad], capture_output=True, text=True, env=slurm_cluster.env(), timeout=30
    )
    assert slurm.parse_start(proc.stdout + proc.stderr, proc.returncode) is None


def test_a_live_site_asks_slurm_when_its_next_pilot_would_start(slurm_cluster):
    """The dispatch policy's SiteControl of a batch site that runs here: Slurm's own
    estimate for a pilot of the site's shape, asked at most every few minutes."""
    import subprocess
    from types import SimpleNamespace

    from crossfl.server.site_executors import SchedulerControl

    site = sites.load_site("local-slurm", overrides=OVERRIDES)
    asked: list[str] = []

    def run(line: str) -> tuple[str, int]:
        asked.append(line)
        proc = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, env=slurm_cluster.env()
        )
        return proc.stdout + proc.stderr, proc.returncode

    plan = SimpleNamespace(
        name="local-slurm",
        catalog=site,
        user_options={"walltime": "00:20:00"},
        held_nodes=1,
        mpi=False,
    )
    now = [0.0]
    control = SchedulerControl(plan, run=run, clock=lambda: now[0])  # type: ignore[arg-type]
    estimate = control.start_estimate_s()
    assert estimate is not None and 0 <= estimate < 300, asked
    now[0] = 10.0  # kept within every_s: not asked again
    assert control.start_estimate_s() == max(0.0, estimate - 10.0) and len(asked) == 2
    # no pilot of the endpoint queued: then a test submission of the pilot's shape
    assert "squeue" in asked[0] and "--start" in asked[0]
    assert "--test-only" in asked[1] and "--time=20:00" in asked[1]


# -- GPU requests on a Slurm whose tasks are bound as a facility's are -----------------------------


@pytest.fixture(scope="module")
def bound_cluster(tmp_path_factory):
    """A second one-node Slurm with the topology a facility node has: this machine's real CPUs,
    tasks bound to their CPUs (task/affinity), GPU i on its own cores (gres.conf Cores=), so
    `--gpu-bind=closest` binds as it does at OLCF and NERSC. SLURM_CONF points at it while the
    module's tests run."""
    from slurm_cluster import SlurmCluster

    why = SlurmCluster.unavailable()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm-bound"), gpus=2, bind_tasks=True)
    if cluster.gpus < 2:
        pytest.skip("binding two GPUs to their own cores needs two CPUs")
    before = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


def bound_site(tmp_path: Path, cluster, **extra: object):
    """local-slurm as Frontier and Perlmutter bind their ranks (accelerator.bind: scheduler:
    the pilot asks --gpus-per-node, each srun step --gpus-per-task=1 --gpu-bind=closest), on
    the bound cluster's CPUs and GPUs."""
    n = cluster.gpus
    per = cluster.cpus // n
    data = {
        "account": "crossfl",
        "cpus_per_node": cluster.cpus,
        "accelerator": {"devices_per_node": n, "bind": "scheduler"},
        "node": {
            "cpus": f"0-{cluster.cpus - 1}",
            "nearest_cpus": {str(i): f"{i * per}-{i * per + per - 1}" for i in range(n)},
        },
        "endpoint": {"max_workers_per_node": n},
        **extra,
    }
    path = tmp_path / "bound.yaml"
    path.write_text(yaml.safe_dump(data))
    return sites.load_site("local-slurm", overrides=path)


def test_pilot_gpus_and_per_task_gpus_bind_one_each(bound_cluster, tmp_path):
    """The rendered smoke job asks `#SBATCH --gpus-per-node=N` and its srun line
    `--gpus-per-task=1 --gpu-bind=closest` (the facilities' own pairing): on real Slurm each
    rank gets exactly one GPU, its own; a second request of the same GPUs would be refused or
    leave a rank with several (smoke_problems says which)."""
    from crossfl.deploy.doctor import smoke_problems

    site = bound_site(tmp_path, bound_cluster)
    out = render.render_site(site, tmp_path / "sites")
    smoke = (out / "batch" / "smoke.sh").read_text()
    assert f"#SBATCH --gpus-per-node={bound_cluster.gpus}" in smoke
    assert "--gpus-per-task=1 --gpu-bind=closest" in smoke
    job = bound_cluster.sbatch(out / "batch" / "smoke.sh", cwd=tmp_path)
    state, code = bound_cluster.wait(job, timeout=150)
    text = _output(tmp_path, "crossfl-smoke-local-slurm-*.out")
    assert (state, code) == ("COMPLETED", "0:0"), text
    every = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    reports = [r for r in every if not r.get("collective")]
    seen = sorted(r["visible"]["CUDA_VISIBLE_DEVICES"] for r in reports)
    assert seen == [str(i) for i in range(bound_cluster.gpus)], text
    # the doctor's own judgement: bound one device each (torch here is the CPU build, which it
    # reports as such for any site whose catalog lists GPUs)
    assert not [p for p in smoke_problems(site, reports) if "bound" in p or "ranks" in p], text


def test_mpi_task_steps_inside_the_rendered_pilot(bound_cluster, tmp_path):
    """The MPI engine's pilot (the real SlurmProvider script of the rendered config: its
    `--gpus-per-node`) runs a task's ranks with Parsl's own srun prefix and the site's
    launcher_options (`--gpus-per-task=1 --gpu-bind=closest`): one GPU per rank, on real Slurm.
    Without the pilot's GPUs the step is refused ("Step requested GRES but job doesn't have
    GRES"), so the pilot's request is needed, not a second one."""
    import time

    from parsl.executors.high_throughput.mpi_prefix_composer import (
        compose_srun_launch_cmd,
        validate_resource_spec,
    )

    from crossfl.server.mpi_tasks import resource_specification

    site = bound_site(
        tmp_path, bound_cluster, endpoint={"tasks": "mpi", "max_workers_per_node": None}
    )
    out = render.render_site(site, tmp_path / "sites")
    text = render.render_user_config(out, {"walltime": "00:05:00"})
    provider = render.load_user_config(text).engine.executor.provider
    assert f"--gpus-per-node={bound_cluster.gpus}" in provider.scheduler_options
    spec = {k: str(v) for k, v in resource_specification(site, 1, bound_cluster.gpus).items()}
    validate_resource_spec(spec)  # as the engine does: num_ranks from nodes x ranks_per_node
    _, prefix = compose_srun_launch_cmd(spec, ["localhost"])
    assert "--gpus-per-task=1" in prefix
    provider.script_dir = str(tmp_path)
    rank = "bash -c 'echo CUDA=$CUDA_VISIBLE_DEVICES'"
    job = provider.submit(f"{prefix} {rank}", 1, "crossfl-mpi-pilot")
    assert job, "sbatch refused the rendered pilot"
    state, code = bound_cluster.wait(job, timeout=150)
    deadline = time.monotonic() + 30  # slurmd writes the output file as the job ends
    while not list(tmp_path.glob("crossfl-mpi-pilot.*.stdout")) and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = sorted(
        w for w in _output(tmp_path, "crossfl-mpi-pilot.*.stdout").split() if "CUDA=" in w
    )
    errors = _output(tmp_path, "crossfl-mpi-pilot.*.stderr")
    assert (state, code) == ("COMPLETED", "0:0"), errors
    assert seen == [f"CUDA={i}" for i in range(bound_cluster.gpus)], errors


def test_per_task_gpus_need_the_pilots_gpus(bound_cluster, tmp_path):
    """The other side: the same step in a job that asked no GPUs is refused by Slurm, so the
    pilot's `--gpus-per-node` is what the steps draw from, not a second request."""
    site = bound_site(tmp_path, bound_cluster)
    rank_options = " ".join(LAUNCHERS["srun"].rank_options(sites.binding(site), bound_cluster.gpus))
    script = tmp_path / "nogpus.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH -N 1\n#SBATCH -t 5\n#SBATCH -o nogpus-%j.out\n"
        f"srun --nodes=1 --ntasks-per-node={bound_cluster.gpus} {rank_options} true\n"
    )
    job = bound_cluster.sbatch(script, cwd=tmp_path)
    state, _ = bound_cluster.wait(job, timeout=150)
    text = _output(tmp_path, "nogpus-*.out")
    assert state == "FAILED" and "doesn't have GRES" in text, text
