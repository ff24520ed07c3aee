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

from crossfl.functions import KEY_ARG, allowed_serializers, kit_functions
from crossfl.server.mpi_tasks import (
    MpiSiteExecutor,
    MpiTask,
    MpiTaskFailed,
    MpiTaskRefused,
    resource_specification,
    result_of,
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
    fn = kit_functions(site)["train"].fn
    assert isinstance(fn, ShellFunction)
    # what the ShellFunction runs: its braces were doubled, the task key goes in as repr
    script = fn.cmd.format(**{KEY_ARG: "/fs/tasks/t.json"})
    assert "\n'/fs/tasks/t.json'\n" in script
    line = script.splitlines()[-1]
    head, _, ranks_line = line.partition("; $PARSL_MPI_PREFIX ")
    assert head == 'export CROSSFL_LAUNCHED_AT="$(date +%s.%N)"'
    words = shlex.split(ranks_line)
    assert words[-6:] == [
        "-m",
        "crossfl.client",
        "run-task",
        "--distributed",
        "$task",
        "$out",
    ]
    assert ranks_line.endswith('"$task" "$out"')
    runtime = {"apptainer": "apptainer", "podman-hpc": "podman-hpc"}[site.container.runtime]
    at = words.index(runtime)
    assert words[at + 1] == ("exec" if runtime == "apptainer" else "shared-run")
    if site.accelerator.bind == "local-rank":  # the rank's own bash picks its device first
        assert words[:2] == ["bash", "-c"] and words[3] == "bind_rank" and at == 4
        local = site.local_rank_env
        assert f"rank=${{{local}:-0}}" in words[2] and words[2].endswith('exec "$@"')
    else:  # srun --gpus-per-task=1 bound it
        assert at == 0
    evaluation = kit_functions(site)["evaluate"].fn
    assert evaluation.cmd.format(**{KEY_ARG: "/x/tasks/k.json"}).endswith(
        'python -m crossfl.client run-task "$task" "$out"'
    )
    assert kit_functions(site)["train"].fn is fn  # one object per (site, kind)


def test_the_ranks_line_runs_in_bash_with_its_binding(tmp_path: Path) -> None:
    """Polaris' line, run by bash with stand-ins for mpiexec and apptainer: rank 2 of a node
    gets GPU 2 (PMI_LOCAL_RANK), the image and the client's arguments arrive intact."""
    import subprocess

    site = golden_site("polaris")
    line = kit_functions(site)["train"].fn.cmd.format(**{KEY_ARG: "/fs/tasks/t.json"})
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
        "crossfl-cuda.sif python -m crossfl.client run-task --distributed /fs/tasks/t.json "
        "/fs/results/t.out.json"
    ), out


HOSTILE_KEYS = [
    "/fs/tasks/t.json'; touch PWNED; '",
    "/fs/tasks/$(touch PWNED).json",
    "/fs/tasks/`touch PWNED`.json",
    "/fs/tasks/t.json\ntouch PWNED",
    "/fs/tasks/t.json\nCROSSFL_TASK_KEY\ntouch PWNED",
    "/fs/../etc/tasks/t.json",
    "/fs/./tasks/t.json",
    "relative/tasks/t.json",
    "/fs/tasks/t.sh",
    "/fs/t.json",
    'it\'s/"both"/tasks/t.json',
    7,
    ["/fs/tasks/t.json"],
    {"k": "/fs/tasks/t.json"},
]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_the_task_function_refuses_any_other_argument(tmp_path: Path, key: Any) -> None:
    """The registered ShellFunction, run as the endpoint's worker runs it (its own __call__ with
    the submitted keyword argument, bash): a key that is not a task file's path stops it with
    exit status 2 before the launcher starts, and nothing in the key runs."""
    import os

    site = golden_site("polaris")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    launched = tmp_path / "launched"
    (bin_dir / "mpiexec").write_text(f"#!/bin/bash\ntouch {launched}\n")
    (bin_dir / "mpiexec").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PARSL_MPI_PREFIX": "mpiexec -n 1",
        "GC_TASK_SANDBOX_DIR": str(tmp_path / "sandbox"),
        "HOME": str(tmp_path),
    }
    fn = kit_functions(site)["train"].fn
    saved = dict(os.environ)
    cwd = os.getcwd()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(tmp_path)
        result = fn(**{KEY_ARG: key})
        launched_by_key = launched.exists()
        good = fn(**{KEY_ARG: "/fs/tasks/t.json"})
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
    assert result.returncode == 2, result
    assert "refused task key" in result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not launched_by_key
    assert good.returncode == 0 and launched.exists()  # a well-formed key does launch


class Pwn:
    """A pickled argument that runs a command when it is unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.path}",))


def test_engines_deserialize_only_what_the_kit_sends(tmp_path: Path, stub_interfaces) -> None:
    """allowed_serializers as the endpoint's own engine holds them and its worker applies them
    (globus_compute_endpoint's execute_task): an MPI site's engine takes the task key as JSON
    and refuses a pickled argument before unpickling it; a worker site's engine refuses a
    function sent as source text; what the kit itself sends runs."""
    import os
    import uuid as _uuid

    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_endpoint.engines.helper import execute_task
    from globus_compute_sdk.serialize import ComputeSerializer
    from globus_compute_sdk.serialize.concretes import (
        DillCode,
        DillCodeSource,
        DillDataBase64,
        JSONData,
    )

    from crossfl import render
    from crossfl.sites import load_site

    def engine(name: str, opts: dict) -> Any:
        out = render.render_site(load_site(name), tmp_path / "sites")
        return render.load_user_config(render.render_user_config(out, opts)).engine

    def run(eng: Any, fn: Any, kwargs: dict, code: Any, data: Any) -> Any:
        ser = ComputeSerializer(strategy_code=code(), strategy_data=data())
        buf = ser.pack_buffers([ser.serialize(fn), ser.serialize(()), ser.serialize(kwargs)])
        packed = messagepack.pack(Task(task_id=_uuid.uuid4(), task_buffer=buf))
        allowed = [f"{c.__module__}.{c.__name__}" for c in eng.serde.allowed_deserializer_types]
        cwd, env = os.getcwd(), dict(os.environ)
        try:
            result = execute_task(
                packed, _uuid.uuid4(), run_dir=str(tmp_path / "run"), task_deserializers=allowed
            )
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
        return messagepack.unpack(result)

    pwned = tmp_path / "pwned"
    mpi = engine("local-slurm-mpi", {"walltime": "00:05:00"})
    key = {KEY_ARG: "/x/tasks/a.json"}
    ok = run(mpi, dict, key, DillCode, JSONData)
    assert not ok.is_error, ok.data
    refused = run(mpi, dict, {KEY_ARG: Pwn(pwned)}, DillCode, DillDataBase64)
    assert refused.is_error and "DillDataBase64 disabled" in refused.data
    assert not pwned.exists()

    local = engine("local", {})
    assert not run(local, dict, key, DillCode, DillDataBase64).is_error
    source = run(local, _source_fn, {}, DillCodeSource, DillDataBase64)
    assert source.is_error and "DillCodeSource disabled" in source.data


def _source_fn() -> int:
    return 1


def test_mpi_engines_take_json_arguments_only() -> None:
    for name in ("frontier", "aurora", "polaris", "perlmutter"):
        assert allowed_serializers(golden_site(name)) == [
            "globus_compute_sdk.serialize.DillCode",
            "globus_compute_sdk.serialize.JSONData",
        ]


class Recording:
    """An inner executor (the SDK Executor's interface): records the resource specification
    each submission saw, and answers with a given ShellResult."""

    def __init__(self, shell: ShellResult) -> None:
        self.shell, self.seen = shell, []
        self.resource_specification: dict[str, Any] | None = None

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future:
        self.seen.append((fn, args, kwargs, self.resource_specification))
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
            "/d/tasks/a.json",
            {"num_nodes": 2, "ranks_per_node": 4},
            lambda shell: {"ranks": 8, "rc": shell.returncode},
        ),
    )
    evaluate = ex.submit(
        fn, MpiTask("/d/tasks/b.json", {"num_nodes": 1, "ranks_per_node": 1}, lambda s: {"e": 1})
    )
    assert train.result() == {"ranks": 8, "rc": 0} and evaluate.result() == {"e": 1}
    assert inner.seen == [  # the function, its one argument (the task key), the resources
        (fn, (), {KEY_ARG: "/d/tasks/a.json"}, {"num_nodes": 2, "ranks_per_node": 4}),
        (fn, (), {KEY_ARG: "/d/tasks/b.json"}, {"num_nodes": 1, "ranks_per_node": 1}),
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
