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
    reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(reports) == 4, out  # one line per rank, one rank per (fake) GPU
    assert {r["host"] for r in reports} == {platform.node()}
    assert all(r["device"] == "cpu" for r in reports)  # the CPU build of torch here
    # Rank i (SLURM_LOCALID) got what Parsl gives worker i: CUDA_VISIBLE_DEVICES=i.
    seen = {r["rank"]: r["env"].split()[0] for r in reports}
    assert seen == {str(i): f"CUDA_VISIBLE_DEVICES={i}" for i in range(4)}, out


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

    plan = SimpleNamespace(catalog=site, user_options={"walltime": "00:20:00"}, held_nodes=1)
    control = SchedulerControl(plan, run=run)  # type: ignore[arg-type]
    estimate = control.start_estimate_s()
    assert estimate is not None and 0 <= estimate < 300, asked
    assert control.start_estimate_s() == estimate and len(asked) == 1
    assert "--test-only" in asked[0] and "--time=20:00" in asked[0]
