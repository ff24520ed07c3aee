"""A site whose endpoint runs Globus Compute's GlobusMPIEngine (`endpoint.tasks: mpi`): the task
line each facility's ranks run (its launcher's rank binding, the image, the client), the
executor that sends it with its resource specification, and, on the real one-node Slurm here,
a whole run through the MPI engine built from the rendered local-slurm-mpi config: the pilot
job's one worker starts each training task as `srun --ntasks 2 ...` ranks, which train
data-parallel and leave the adapter where the server reads it."""

from __future__ import annotations

import json
import shlex
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import yaml
from globus_compute_sdk import ShellFunction
from globus_compute_sdk.sdk.shell_function import ShellResult
from rich.console import Console
from testkit.scratch_project import make_project, write_experiment

from crossfl.server.mpi_tasks import (
    MpiSiteExecutor,
    MpiTask,
    MpiTaskFailed,
    MpiTaskRefused,
    resource_specification,
    result_of,
    shell_function,
)
from golden_sites import golden_site

ROOT = Path(__file__).resolve().parents[1]

# What each facility's ranks are started with (after the engine's own srun/mpiexec placement):
# OLCF "srun -N1 -n8 -c7 --gpus-per-task=1 --gpu-bind=closest"; NERSC -c 32 and
# --gpu-bind=closest; ALCF mpiexec --cpu-bind list: (Aurora's 12-tile list, Polaris' GPU-nearest
# cores) with the device from the local rank (bind_rank).
LAUNCHER_OPTIONS = {
    "frontier": "--cpus-per-task=7 --gpus-per-task=1 --gpu-bind=closest",
    "perlmutter": "--cpus-per-task=32 --gpus-per-task=1 --gpu-bind=closest",
    "polaris": "--cpu-bind list:24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39",
    "aurora": "--cpu-bind list:1-8,105-112:9-16,113-120:17-24,121-128:25-32,129-136:33-40,"
    "137-144:41-48,145-152:53-60,157-164:61-68,165-172:69-76,173-180:77-84,181-188:"
    "85-92,189-196:93-100,197-204",
}


@pytest.mark.parametrize("name", sorted(LAUNCHER_OPTIONS))
def test_each_facility_launches_its_ranks_as_documented(name: str) -> None:
    site = golden_site(name)
    ranks = site.ranks_per_node()
    spec = resource_specification(site, 2, ranks)
    assert spec == {
        "num_nodes": 2,
        "ranks_per_node": ranks,
        "launcher_options": LAUNCHER_OPTIONS[name],
    }
    fn = shell_function(site, "/fs/t.json", "/fs/o.json", distributed=True)
    assert isinstance(fn, ShellFunction)
    line = fn.cmd.format()  # what the ShellFunction runs: its braces were doubled
    head, _, ranks_line = line.partition("; $PARSL_MPI_PREFIX ")
    assert head == 'export CROSSFL_LAUNCHED_AT="$(date +%s.%N)"'
    words = shlex.split(ranks_line)
    assert words[-6:] == [
        "-m",
        "crossfl.client",
        "run-task",
        "--distributed",
        "/fs/t.json",
        "/fs/o.json",
    ]
    runtime = {"apptainer": "apptainer", "podman-hpc": "podman-hpc"}[site.container.runtime]
    at = words.index(runtime)
    assert words[at + 1] == ("exec" if runtime == "apptainer" else "shared-run")
    if site.accelerator.bind == "local-rank":  # the rank's own bash picks its device first
        assert words[:2] == ["bash", "-c"] and words[3] == "bind_rank" and at == 4
        local = site.local_rank_env
        assert f"rank=${{{local}:-0}}" in words[2] and words[2].endswith('exec "$@"')
    else:  # srun --gpus-per-task=1 bound it
        assert at == 0
    evaluation = shell_function(site, "/fs/t.json", "/fs/o.json", distributed=False)
    assert evaluation.cmd.format().endswith(
        "python -m crossfl.client run-task /fs/t.json /fs/o.json"
    )


def test_the_ranks_line_runs_in_bash_with_its_binding(tmp_path: Path) -> None:
    """Polaris' line, run by bash with stand-ins for mpiexec and apptainer: rank 2 of a node
    gets GPU 2 (PMI_LOCAL_RANK), the image and the client's arguments arrive intact."""
    import subprocess

    site = golden_site("polaris")
    line = shell_function(site, "/fs/t.json", "/fs/o.json", distributed=True).cmd.format()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mpiexec").write_text(  # one rank of the four: after -n 8 -ppn 4
        '#!/bin/bash\nPMI_LOCAL_RANK=2 exec "${@:5}"\n'
    )
    (bin_dir / "apptainer").write_text(
        '#!/bin/bash\necho "CVD=$CUDA_VISIBLE_DEVICES at=$CROSSFL_LAUNCHED_AT args=$*"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PARSL_MPI_PREFIX": "mpiexec -n 8 -ppn 4",
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("CVD=2 at=1") and out.endswith(
        "crossfl-cuda.sif python -m crossfl.client run-task --distributed /fs/t.json /fs/o.json"
    ), out


class Recording:
    """An inner executor (the SDK Executor's interface): records the resource specification
    each submission saw, and answers with a given ShellResult."""

    def __init__(self, shell: ShellResult) -> None:
        self.shell, self.seen = shell, []
        self.resource_specification: dict[str, Any] | None = None

    def submit(self, fn: Any, *args: Any) -> Future:
        self.seen.append((fn, args, self.resource_specification))
        fut: Future = Future()
        fut.set_result(self.shell)
        return fut

    def shutdown(self, **_: Any) -> None:
        pass


def test_the_executor_sends_each_task_with_its_resources() -> None:
    ok = ShellResult("x", "", "", 0)
    inner = Recording(ok)
    ex = MpiSiteExecutor(inner)  # type: ignore[arg-type]
    fn = ShellFunction("true")
    train = ex.submit(
        fn,
        MpiTask(
            {"num_nodes": 2, "ranks_per_node": 4},
            lambda shell: {"ranks": 8, "rc": shell.returncode},
        ),
    )
    evaluate = ex.submit(fn, MpiTask({"num_nodes": 1, "ranks_per_node": 1}, lambda s: {"e": 1}))
    assert train.result() == {"ranks": 8, "rc": 0} and evaluate.result() == {"e": 1}
    assert [(f, a, s) for f, a, s in inner.seen] == [
        (fn, (), {"num_nodes": 2, "ranks_per_node": 4}),
        (fn, (), {"num_nodes": 1, "ranks_per_node": 1}),
    ]
    with pytest.raises(TypeError, match="MpiTask"):
        ex.submit(fn, {"num_nodes": 1})


def test_a_refused_or_failed_launch_is_one_line() -> None:
    bad = ShellResult("x", "", "srun: error: Unable to create step\n", 1)
    with pytest.raises(MpiTaskRefused, match="UserError: data_path: no such file"):
        result_of(bad, lambda: {"error": "data_path: no such file"})
    with pytest.raises(MpiTaskFailed, match="exited 1: srun: error: Unable to create step"):
        result_of(bad, lambda: None)
    with pytest.raises(MpiTaskFailed, match="wrote no result"):
        result_of(ShellResult("x", "", "", 0), lambda: None)
    from crossfl.server.faults import is_system_failure

    assert not is_system_failure(MpiTaskRefused("UserError: x"))  # never retried


# ------------------------------------------------------------------ the real engine and Slurm


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("mpi-project"), ROOT, molecules=120)


def test_a_run_through_the_mpi_engine_on_real_slurm(
    slurm_cluster, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """local-slurm-mpi: the rendered GlobusMPIEngine + SlurmProvider (SimpleLauncher) submits a
    real pilot job; each training task is `srun --ntasks 2 --ntasks-per-node 2 ...` CPU ranks
    (gloo) launched by the pilot's worker with $PARSL_MPI_PREFIX; rank 0 leaves the adapter in
    the run's transport directory; evaluation runs as one rank the same way."""
    from crossfl.server.experiment import load_experiment
    from crossfl.server.lifecycle import run_experiment
    from crossfl.server.report import summary_tables

    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    path = write_experiment(
        project,
        "mpi-run",
        rounds=1,
        sites=[
            {
                "name": "cluster",
                "site": "local-slurm-mpi",
                "ranks_per_node": 2,
                "user_options": {
                    "walltime": "00:10:00",
                    "worker_init": f"source {ROOT}/.venv/bin/activate",
                },
            }
        ],
        training={
            "local_steps": 2,
            "batch_size": 2,
            "lr": 0.005,
            "max_length": 96,
            "torch_threads": 1,
        },
    )
    exp, path = load_experiment(path)
    run_dir = run_experiment(exp, path, Console(width=80, record=True))
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (task,) = [r for r in records if r["kind"] == "task"]
    assert task["status"] == "ok", task
    assert task["ranks"] == 2 and task["dist_backend"] == "gloo" and task["nodes_used"] == 1
    assert task["transport"] == "shared_fs" and task["bytes_up"] > 0
    assert task["nodes"] == 1 and task["node_hours"] > 0 and task["devices_held"] == 2
    assert 0 < task["device_busy"] <= 1 and "nodes held x task wall" in task["node_hours_basis"]
    assert len([r for r in records if r["kind"] in ("baseline", "round")]) == 2
    assert (run_dir / "final_adapter" / "adapter_model.safetensors").stat().st_size > 0
    # rank 0 wrote the result and the adapter where the server reads them
    results = sorted((run_dir / "transport" / "results").glob("cluster-*"))
    assert any(p.name.endswith(".out.json") for p in results)
    assert any(p.suffix == ".safetensors" for p in results)
    scripts = [
        p.read_text()
        for p in (run_dir / "engines").rglob("submit_scripts/*")
        if p.suffix not in (".stdout", ".stderr") and "#SBATCH" in p.read_text()
    ]
    assert len(scripts) == 1 and "--enable_mpi_mode" in scripts[0]
    assert "--mpi-launcher=srun" in scripts[0]  # the worker starts the ranks with srun
    assert "\nsrun " not in scripts[0]  # SimpleLauncher: the pilot itself runs the worker
    out = Console(width=80, record=True)
    for table in summary_tables(run_dir):
        out.print(table)
    text = out.export_text()
    assert "allocation" in text and max(len(ln) for ln in text.splitlines()) <= 80
    row = next(
        ln for ln in text.splitlines() if ln.lstrip("│ ").startswith("cluster") and "cpu" in ln
    )
    assert row.split("│")[3].strip() == "2"  # ranks
    assert (
        yaml.safe_load((run_dir / "experiment.yaml").read_text())["sites"][0]["ranks_per_node"] == 2
    )


def test_chem_lora_trains_on_every_device_of_every_node() -> None:
    """The science experiment asks, at each facility, for one rank per accelerator of each node
    its tasks hold, within the facility's rules, through the MPI engine."""
    from crossfl.server.experiment import load_experiment
    from crossfl.server.plan import task_shape
    from crossfl.sites import check_request

    exp, _ = load_experiment(ROOT / "deploy" / "experiments" / "chem-lora.yaml")
    devices = {"frontier": 8, "aurora": 12, "polaris": 4, "perlmutter": 4}
    assert sorted(s.site for s in exp.sites) == sorted(devices)
    for entry in exp.sites:
        site = golden_site(entry.site)
        assert site.endpoint.tasks == "mpi" and site.devices_per_node() == devices[entry.site]
        nodes, ranks, options = task_shape(site, entry)
        assert (nodes, ranks) == (entry.nodes, devices[entry.site])
        check_request(site, options, nodes=nodes, ranks_per_node=ranks)
        assert resource_specification(site, nodes, ranks)["ranks_per_node"] == ranks


def test_parsl_mpi_mode_runs_one_node_tasks(tmp_path: Path, monkeypatch) -> None:
    """ALCF's Parsl page says "The MPIExecutor can only run tasks that use more than one node"
    (https://docs.alcf.anl.gov/aurora/workflows/parsl/, checked 2026-12-07), while chem-lora
    runs one-node MPI tasks on Aurora and Polaris. Parsl's own code (2026.10.26, what the
    endpoint runs) holds no such rule: validate_resource_spec accepts num_nodes 1
    (executors/high_throughput/mpi_prefix_composer.py) and MPITaskScheduler hands a one-node
    task the one node of a one-node PBS pilot (mpi_resource_management.py, put_task /
    _get_nodes); test_a_run_through_the_mpi_engine_on_real_slurm runs such tasks end to end."""
    import queue

    from parsl.executors.high_throughput.mpi_prefix_composer import (
        compose_mpiexec_launch_cmd,
        validate_resource_spec,
    )
    from parsl.executors.high_throughput.mpi_resource_management import MPITaskScheduler

    spec = {"num_nodes": 1, "ranks_per_node": 12}
    validate_resource_spec(spec)  # no InvalidResourceSpecification
    assert spec["num_ranks"] == "12"
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x4102c0s0b0n0\n")  # the one node of a one-node pilot
    for var in ("SLURM_JOB_ID", "SLURM_NODELIST", "SLURM_JOB_NODELIST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    tasks_q: queue.Queue = queue.Queue()
    sched = MPITaskScheduler(tasks_q, queue.Queue())  # type: ignore[arg-type]
    sched.put_task({"task_id": 1, "context": {"resource_spec": dict(spec)}})
    placed = tasks_q.get_nowait()  # scheduled at once, not backlogged
    assert placed["context"]["resource_spec"]["MPI_NODELIST"] == "x4102c0s0b0n0"
    _, prefix = compose_mpiexec_launch_cmd(spec, ["x4102c0s0b0n0"])
    assert prefix.startswith("mpiexec -n 12 -ppn 12 -hosts x4102c0s0b0n0")
