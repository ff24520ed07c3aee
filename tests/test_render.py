"""Rendering: every site's endpoint files load with the endpoint's own loader and build their
engine, provider and launcher; the template renders for valid options and refuses invalid ones;
the pilot-job and batch scripts are pinned by golden files and pass shellcheck; rendering is
atomic; the local site runs a task on the real engine.

Regenerate the golden files with CROSSFL_UPDATE_GOLDEN=1 (then read the diff)."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import unittest.mock as mock
from pathlib import Path

import pytest
import yaml

from conftest import run_on_engine
from crossfl import paths, render, sites
from crossfl.errors import UserError
from crossfl.locks import DIR_LOCK
from golden_sites import golden_site

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
OVERRIDES = GOLDEN / "overrides"
CATALOG = ("frontier", "aurora", "polaris", "perlmutter", "local", "local-slurm")
ALL = sites.list_sites()
HPC = [n for n in CATALOG if n not in ("local",)]

PROVIDER = {"slurm": "SlurmProvider", "pbs": "PBSProProvider", "local": "LocalProvider"}
LAUNCHER = {"srun": "SrunLauncher", "mpiexec": "MpiExecLauncher", "single": "SingleNodeLauncher"}

# Options a user could pass per task group: valid for the site's schema.
VALID_OPTS = {
    "frontier": {
        "account": "xyz789",
        "walltime": "00:30:00",
        "nodes_per_block": 2,
        "qos": "normal",
    },
    "polaris": {
        "account": "P1",
        "queue": "debug-scaling",
        "walltime": "00:45:00",
        "nodes_per_block": 4,
    },
    "aurora": {"account": "P1", "queue": "capacity", "walltime": "02:00:00", "max_blocks": 2},
    "perlmutter": {"account": "m1_g", "qos": "preempt", "walltime": "04:00:00"},
    "local-slurm": {"walltime": "00:05:00", "worker_init": "echo ready"},
    "local-slurm-ssh": {"walltime": "00:05:00", "worker_init": "echo ready"},
    "local-slurm-mpi": {"walltime": "00:05:00", "worker_init": "echo ready"},
    "local": {"max_workers_per_node": 2, "worker_init": "export A=1"},
}


def valid_opts(name: str) -> dict:
    """Sample options for a site; other helpers' local sites take the local site's."""
    if name in VALID_OPTS:
        return VALID_OPTS[name]
    assert site_for_test(name).scheduler == "local", f"add sample options for {name}"
    return VALID_OPTS["local"]


def site_for_test(name: str, tasks: str | None = None) -> sites.Site:
    return golden_site(name, tasks)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sites")
    return {name: render.render_site(site_for_test(name), out) for name in ALL}


@pytest.fixture(scope="module")
def per_device(tmp_path_factory) -> dict[str, Path]:
    """The batch sites rendered with one pinned worker per device (endpoint.tasks)."""
    out = tmp_path_factory.mktemp("per-device")
    return {name: render.render_site(site_for_test(name, "per-device"), out) for name in HPC}


def normalize(text: str, *extra: tuple[str, str]) -> str:
    text = text.replace(str(paths.project_root()), "<project_root>")
    for old, new in extra:
        text = text.replace(old, new)
    return re.sub(r"\bx\.\d{9,}\.\d+", "x.<time>", text)


def assert_golden(rel: str, text: str) -> None:
    path = GOLDEN / rel
    if os.environ.get("CROSSFL_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.is_file(), f"no golden file {rel}: run with CROSSFL_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{rel} differs from the golden file"


def test_catalog_has_the_sites():
    assert set(CATALOG) <= set(ALL)


# --- the endpoint directory ------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_endpoint_files(rendered, name):
    ep = rendered[name] / "endpoint"
    assert sorted(p.name for p in ep.iterdir()) == [
        "config.yaml",
        "user_config.example.yaml",
        "user_config_schema.json",
        "user_config_template.yaml.j2",
        "user_environment.yaml",
    ]
    assert isinstance(yaml.safe_load((ep / "user_environment.yaml").read_text()) or {}, dict)


@pytest.mark.parametrize("name", ALL)
def test_core_config_loads(rendered, name):
    from globus_compute_endpoint.endpoint.config import CoreEndpointConfig
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    text = (rendered[name] / "endpoint" / "config.yaml").read_text()
    cfg = load_config_yaml(text)
    assert isinstance(cfg, CoreEndpointConfig)
    assert "engine" not in yaml.safe_load(text)
    assert cfg.display_name == f"crossfl {name}"
    site = site_for_test(name)
    if site.deploy.host is None:  # run from this checkout: the template paths are absolute
        ep = rendered[name] / "endpoint"
        assert cfg.user_config_template_path == ep / "user_config_template.yaml.j2"
        assert cfg.user_config_schema_path == ep / "user_config_schema.json"


def test_allowed_functions_are_rendered(tmp_path):
    site = site_for_test("local").model_copy(deep=True)
    fid = "2c4f8f8e-1a8a-4c5e-9a86-2f6f2f1c0d11"
    site.endpoint.allowed_functions = [fid]
    out = render.render_site(site, tmp_path)
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    cfg = load_config_yaml((out / "endpoint" / "config.yaml").read_text())
    assert cfg.allowed_functions == (fid,)


def check_engine(site: sites.Site, engine) -> None:
    """The rendered engine hands the node's devices out as `endpoint.tasks` says."""
    from globus_compute_endpoint.engines import GlobusComputeEngine, GlobusMPIEngine

    htex = engine.executor
    acc = site.accelerator
    assert type(htex.provider).__name__ == PROVIDER[site.scheduler]
    if site.endpoint.tasks == "mpi":  # one worker per pilot launches each task's ranks
        assert isinstance(engine, GlobusMPIEngine) and htex.enable_mpi_mode
        assert htex.mpi_launcher == site.launcher.type
        assert type(htex.provider.launcher).__name__ == "SimpleLauncher"
        assert htex.available_accelerators == [] and htex.max_workers_per_node == 1
        assert engine.container_type is None and engine.run_in_sandbox
        if site.deploy.python_activate:  # the worker runs the login node's Python
            assert htex.provider.worker_init.rstrip().endswith(site.deploy.python_activate)
        return
    assert isinstance(engine, GlobusComputeEngine) and not isinstance(engine, GlobusMPIEngine)
    assert type(htex.provider.launcher).__name__ == LAUNCHER[site.launcher.type]
    if site.endpoint.tasks == "per-node":  # one worker holds the node
        assert htex.available_accelerators == [] and htex.cpu_affinity == "none"
        assert htex.max_workers_per_node == 1
    elif acc.devices_per_node:
        assert htex.available_accelerators == acc.device_ids
        assert htex.max_workers_per_node == acc.devices_per_node


@pytest.mark.parametrize("name", ALL)
def test_example_builds_engine_provider_launcher(rendered, name, stub_interfaces):
    from globus_compute_endpoint.endpoint.config import UserEndpointConfig

    site = site_for_test(name)
    example = rendered[name] / "endpoint" / "user_config.example.yaml"
    cfg = render.load_user_config(example.read_text())
    assert isinstance(cfg, UserEndpointConfig)
    check_engine(site, cfg.engine)


LOCAL = [n for n in ALL if n.startswith("local")]  # workers on this machine (localhost-ssh too)


def test_the_local_sites_are_those_of_this_machine():
    assert {"local", "local-slurm", "local-slurm-mpi", "localhost-ssh"} <= set(LOCAL)
    assert not set(LOCAL) & {"frontier", "aurora", "polaris", "perlmutter"}


@pytest.mark.parametrize("name", ALL)
def test_no_open_listener(rendered, name, stub_interfaces):
    """Every shipped site's engine is CurveZMQ-encrypted; where the workers run on this
    machine, the interchange listens on loopback and the workers connect there (HTEX
    ``address``: the interchange binds it instead of ``tcp://*``)."""
    text = (rendered[name] / "endpoint" / "user_config.example.yaml").read_text()
    htex = render.load_user_config(text).engine.executor
    assert htex.encrypted, name
    assert htex.loopback_address == "127.0.0.1"
    address = yaml.safe_load(text)["engine"].get("address")
    if name in LOCAL:
        assert address == "127.0.0.1"
        assert htex.address == "127.0.0.1" and htex.all_addresses == {"127.0.0.1"}
    else:  # a facility: the workers reach the interchange over the high-speed network
        assert address == {"type": "address_by_interface", "ifname": "hsn0"}


@pytest.mark.parametrize("name", HPC)
def test_per_device_workers_and_their_containers(per_device, name, stub_interfaces):
    site = site_for_test(name, "per-device")
    example = per_device[name] / "endpoint" / "user_config.example.yaml"
    engine = render.load_user_config(example.read_text()).engine
    check_engine(site, engine)
    acc = site.accelerator
    if site.container.runtime == "apptainer":
        # apptainer through `custom`, to bind the engine's run directory (test_site_containers)
        assert engine.container_type == "custom"
        assert engine.container_uri == site.image()
        opts = engine.container_cmd_options.split()
        assert opts[:2] == ["apptainer", "run"] and opts[-1] == "{EXECUTOR_LAUNCH_CMD}"
        assert opts[-3:-1] == ["{EXECUTOR_RUNDIR}", f'"{site.image()}"']
        flag = {"cuda": "--nv", "rocm": "--rocm"}.get(acc.vendor)
        if flag:
            assert flag in opts
        else:
            assert "--nv" not in opts and "--rocm" not in opts
    elif site.container.runtime == "podman-hpc":  # Globus Compute's own podman-hpc type
        assert engine.container_type == "podman-hpc"
        assert engine.container_uri == site.image()
        opts = engine.container_cmd_options.split()
        assert ("--gpu" in opts) == (acc.vendor == "cuda")
        engine.run_dir = "/run/dir"
        launch = engine.containerized_launch_cmd()
        assert launch.startswith(
            f"podman-hpc run {engine.container_cmd_options} -v "
            f"/run/dir:/run/dir -t {site.image()} globus-compute-endpoint "
        )
        # Parsl formats the command twice: no braces but its own placeholders
        assert "{" not in launch.replace(engine.executor.launch_cmd, "")
    else:
        assert engine.container_type is None


def test_facility_specifics(rendered, stub_interfaces):
    """The catalog's facilities run the MPI engine: the pilot's worker on the host, the ranks
    in the image (crossfl.render.shell.mpi_task_line, tests/test_mpi_tasks.py)."""

    def engine(name):
        text = (rendered[name] / "endpoint" / "user_config.example.yaml").read_text()
        return render.load_user_config(text).engine

    aurora = engine("aurora").executor
    assert aurora.mpi_launcher == "mpiexec" and aurora.provider.cpus_per_node == 208
    assert "filesystems=home:flare" in aurora.provider.scheduler_options
    assert "export ZE_FLAT_DEVICE_HIERARCHY=FLAT" in aurora.provider.worker_init
    # the MPI worker runs from the endpoint's own venv (deploy.python), no `frameworks` module
    assert 'source "$HOME/.crossfl/aurora/endpoint/bin/activate"' in aurora.provider.worker_init
    assert "module load frameworks" not in aurora.provider.worker_init
    polaris = engine("polaris").executor
    assert polaris.provider.select_options.endswith("system=polaris")
    assert "export TMPDIR=/tmp" in polaris.provider.worker_init
    frontier = engine("frontier").executor
    provider = frontier.provider
    assert (provider.partition, provider.qos, provider.account) == ("batch", "normal", "ABC123")
    assert "#SBATCH --gpus-per-node=8" in provider.scheduler_options  # for the ranks' srun
    assert frontier.mpi_launcher == "srun"
    perl = engine("perlmutter").executor
    assert perl.provider.constraint == "gpu" and perl.mpi_launcher == "srun"


def test_facility_specifics_per_device(per_device, stub_interfaces):
    def engine(name):
        text = (per_device[name] / "endpoint" / "user_config.example.yaml").read_text()
        return render.load_user_config(text).engine

    aurora = engine("aurora").executor
    assert aurora.available_accelerators == [str(i) for i in range(12)]  # FLAT tiles
    assert aurora.cpu_affinity.startswith("list:1-8,105-112:9-16,113-120:")
    assert aurora.provider.cpus_per_node == 208
    assert "filesystems=home:flare" in aurora.provider.scheduler_options
    assert "-k doe" in aurora.provider.scheduler_options
    assert "proxy.alcf.anl.gov:3128" in aurora.provider.worker_init
    assert "export ZE_FLAT_DEVICE_HIERARCHY=FLAT" in aurora.provider.worker_init
    assert "export TMPDIR=/tmp" in aurora.provider.worker_init
    polaris = engine("polaris")
    assert polaris.executor.provider.select_options.endswith("system=polaris")
    assert "--fakeroot" in polaris.container_cmd_options
    assert "/var/run/palsd/" in polaris.container_cmd_options
    assert "export TMPDIR=/tmp" in polaris.executor.provider.worker_init
    assert polaris.executor.cpu_affinity == "list:24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39"
    frontier = engine("frontier").executor
    provider = frontier.provider
    assert (provider.partition, provider.qos, provider.account) == ("batch", "normal", "ABC123")
    assert provider.launcher.overrides == "-c 56"  # the pool and its workers get 56 cores
    assert "MIOPEN_CUSTOM_CACHE_DIR=/tmp/crossfl-miopen-cache" in provider.worker_init
    perl = engine("perlmutter")
    provider = perl.executor.provider
    assert provider.constraint == "gpu" and provider.account.endswith("_g")
    assert provider.qos == "regular" and provider.exclusive is True
    assert provider.launcher.overrides == "-c 128"
    # the catalog's name until deploy pins the image by its ID (crossfl.sites.with_deployed_image)
    assert perl.container_type == "podman-hpc" and perl.container_uri == "crossfl-cuda"


@pytest.mark.parametrize("name", ALL)
def test_template_keeps_endpoint_variables(rendered, name):
    text = (rendered[name] / "endpoint" / "user_config_template.yaml.j2").read_text()
    assert "{{ (worker_init | default(" in text
    assert "<<" not in text and "<%" not in text


@pytest.mark.parametrize("name", ALL)
def test_schema_matches_template(rendered, name):
    schema = json.loads((rendered[name] / "endpoint" / "user_config_schema.json").read_text())
    text = (rendered[name] / "endpoint" / "user_config_template.yaml.j2").read_text()
    used = set(re.findall(r"\{\{ \(?(\w+)", text))
    assert used == set(schema["properties"])
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", ALL)
def test_valid_options_render_and_load(rendered, name, stub_interfaces):
    opts = valid_opts(name)
    text = render.render_user_config(rendered[name], opts)
    provider = render.load_user_config(text).engine.executor.provider
    if "walltime" in opts:
        assert provider.walltime == opts["walltime"]
    if "account" in opts:
        assert provider.account == opts["account"]
    if "nodes_per_block" in opts:
        assert provider.nodes_per_block == opts["nodes_per_block"]
    if "worker_init" in opts:
        assert provider.worker_init.rstrip().endswith(opts["worker_init"])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "bad, field",
    [
        ({"no_such_option": 1}, "options"),
        ({"worker_init": 7}, "worker_init"),
    ],
)
def test_refuses_bad_options(rendered, name, bad, field):
    opts = {**valid_opts(name), **bad}
    with pytest.raises(UserError) as info:
        render.render_user_config(rendered[name], opts)
    assert info.value.field == field
    assert info.value.fix


@pytest.mark.parametrize("name", HPC)
@pytest.mark.parametrize(
    "key, value, fix",
    [
        ("walltime", "1h", "01:00:00"),
        ("walltime", "10:99:00", "01:00:00"),
        ("nodes_per_block", 0, ">= 1"),
    ],
)
def test_refuses_bad_scheduler_options(rendered, name, key, value, fix):
    with pytest.raises(UserError) as info:
        render.render_user_config(rendered[name], {**VALID_OPTS[name], key: value})
    assert info.value.option == key  # refused by check_request, before the endpoint
    assert info.value.render().startswith(f"{name}: ") and fix in info.value.render()


def test_refuses_unknown_queue(rendered):
    with pytest.raises(UserError) as info:
        render.render_user_config(rendered["polaris"], {"account": "P", "queue": "gpu"})
    assert info.value.option == "queue" and "debug-scaling" in info.value.fix
    with pytest.raises(UserError) as info:
        render.render_user_config(rendered["perlmutter"], {"account": "m_g", "qos": "fast"})
    assert info.value.option == "qos" and "regular" in info.value.fix


def test_missing_account_names_option_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("CROSSFL_FRONTIER_ACCOUNT", raising=False)
    out = render.render_site(sites.load_site("frontier"), tmp_path)
    with pytest.raises(UserError) as info:
        render.render_user_config(out, {})
    assert info.value.field == "account"
    assert "overrides" in info.value.fix and "user_config_schema.json" in info.value.file
    monkeypatch.setenv("CROSSFL_FRONTIER_ACCOUNT", "fromenv1")
    out = render.render_site(sites.load_site("frontier"), tmp_path)
    provider = yaml.safe_load(render.render_user_config(out, {}))["engine"]["provider"]
    assert provider["account"] == "fromenv1"


def test_user_strings_cannot_break_out(rendered, stub_interfaces):
    nasty = 'echo "a b"\nexport X=1 # }}" \\n\'\nkey: injected'
    text = render.render_user_config(rendered["local"], {"worker_init": nasty})
    data = yaml.safe_load(text)
    assert data["engine"]["provider"]["worker_init"] == nasty
    assert "key" not in data
    text = render.render_user_config(rendered["frontier"], {"worker_init": nasty, "account": "a1"})
    provider = yaml.safe_load(text)["engine"]["provider"]
    assert provider["worker_init"].startswith("module load olcf-container-tools\n")
    assert provider["worker_init"].endswith(nasty)
    # a name Parsl writes into #SBATCH lines (or hands qsub) is refused, not quoted
    with pytest.raises(UserError) as info:
        render.render_user_config(rendered["frontier"], {"account": 'a"\nb: c'})
    assert info.value.field == "account" and "match the pattern" in info.value.render()


def test_local_schema(rendered):
    schema = json.loads((rendered["local"] / "endpoint" / "user_config_schema.json").read_text())
    assert set(schema["properties"]) == {
        "max_workers_per_node",
        "worker_init",
        "max_idletime",
        "idle_heartbeats_soft",
    }
    assert schema["properties"]["max_workers_per_node"]["default"] == 1
    assert schema["properties"]["worker_init"]["default"] == ""
    assert "required" not in schema


def test_local_slurm_worker_init_defaults_to_this_venv(rendered):
    text = render.render_user_config(rendered["local-slurm"], {})
    provider = yaml.safe_load(text)["engine"]["provider"]
    assert provider["worker_init"] == f"source {paths.project_root()}/.venv/bin/activate"
    assert provider["partition"] == "debug" and provider["type"] == "SlurmProvider"


@pytest.mark.slow
def test_local_engine_runs_a_task(rendered, tmp_path):
    text = render.render_user_config(rendered["local"], {"max_workers_per_node": 1})
    cfg = render.load_user_config(text)
    assert run_on_engine(cfg.engine, tmp_path, platform.node, timeout=120) == platform.node()


# --- pilot jobs and batch scripts ------------------------------------------------------------


def pilot_script(site_dir: Path, tmp_path: Path) -> tuple[str, str]:
    """The job script and submit line the engine's provider would use, for real."""
    text = (site_dir / "endpoint" / "user_config.example.yaml").read_text()
    engine = render.load_user_config(text).engine
    provider = engine.executor.provider
    provider.script_dir = str(tmp_path)
    engine.run_dir = str(tmp_path / "run")  # as GlobusComputeEngine.start() sets it
    cmd = engine.containerized_launch_cmd() if engine.container_type else engine.executor.launch_cmd
    calls = []

    def execute_wait(command, timeout=None):
        calls.append(command)
        return 0, "Submitted batch job 1234" if "sbatch" in command else "1234.pbs", ""

    with mock.patch.object(provider, "execute_wait", execute_wait):
        job_id = provider.submit(cmd, 1, "x")
    assert job_id
    scripts = list(tmp_path.glob("x.*.submit")) or list(tmp_path.glob("x.*"))
    script = [p for p in scripts if not p.name.endswith((".stdout", ".stderr"))][0]
    norm = (str(tmp_path), "<script_dir>")
    return normalize(script.read_text(), norm), normalize(calls[-1], norm)


@pytest.mark.parametrize("name", HPC)
def test_pilot_job_golden(rendered, name, tmp_path, stub_interfaces):
    script, submit = pilot_script(rendered[name], tmp_path)
    site = site_for_test(name)
    assert sites.lint_script(site, script) == []
    assert_golden(f"{name}/pilot.sh", script + f"\n# submitted with: {submit}\n")
    if site.endpoint.tasks == "mpi":  # the worker on the first node, outside the image
        assert (
            "\nglobus-compute-endpoint python-exec parsl.executors.high_throughput."
            "process_worker_pool " in script
        )  # SimpleLauncher: no srun / mpiexec around it
        assert "apptainer exec" not in script and "apptainer run" not in script
        assert "podman-hpc" not in script


@pytest.mark.parametrize("name", HPC)
def test_per_device_pilot_job_golden(per_device, name, tmp_path, stub_interfaces):
    script, submit = pilot_script(per_device[name], tmp_path)
    site = site_for_test(name, "per-device")
    assert sites.lint_script(site, script) == []
    assert_golden(f"{name}/pilot-per-device.sh", script + f"\n# submitted with: {submit}\n")
    if site.container.runtime == "apptainer":
        assert (
            f"apptainer run {render.container_options_text(site)} -B <script_dir>/run "
            f"{site.image()} globus-compute-endpoint python-exec "
        ) in script
    if site.container.runtime == "podman-hpc":  # the engine adds its run dir and -t
        assert (
            f"podman-hpc run {render.container_options_text(site)} -v <script_dir>/run:"
            f"<script_dir>/run -t {site.image()} globus-compute-endpoint "
        ) in script
    launcher = {"srun": "srun", "mpiexec": "mpiexec"}[site.launcher.type]
    assert launcher in script


@pytest.mark.parametrize("name", HPC)
def test_batch_scripts_golden_and_shellcheck(rendered, name):
    site = site_for_test(name)
    batch = rendered[name] / "batch"
    names = sorted(p.name for p in batch.iterdir())
    expected = ["client.sh", "smoke.sh"]
    on_node = site.container.build is not None and site.container.build.on_compute_node
    builds = on_node or site.container.image_source.method == "build"
    if builds and site.container.runtime == "apptainer":  # an Apptainer def, built on site
        expected = ["build_image.sh", *expected]
    if builds and site.container.runtime == "podman-hpc":  # podman-hpc build on the login node
        expected = ["build_image.sh", *expected]
    assert names == expected
    for script in sorted(batch.iterdir()):
        text = script.read_text()
        assert os.access(script, os.X_OK)
        assert sites.lint_script(site, text) == [], script.name
        assert_golden(f"{name}/{script.name}", normalize(text))
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    proc = subprocess.run(
        ["shellcheck", "-s", "bash", *map(str, sorted(batch.iterdir()))],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout


def test_batch_smoke_runs_describe_devices(rendered):
    """Rank i gets what worker i gets: device ids[i] in Parsl's variables, the expected device
    checked by the client, and worker i's CPUs."""
    text = (rendered["frontier"] / "batch" / "smoke.sh").read_text()
    assert "python -m crossfl.client devices --expect rocm" in text
    # OLCF's line: "srun -N1 -n8 -c7 --gpus-per-task=1 --gpu-bind=closest"
    assert (
        "srun --nodes=1 --ntasks=8 --ntasks-per-node=8 --cpus-per-task=7 --gpus-per-task=1 "
        "--gpu-bind=closest apptainer exec --rocm" in text
    )
    assert "#SBATCH --cpus-per-task=7" in text and "bind_rank" not in text
    polaris = (rendered["polaris"] / "batch" / "smoke.sh").read_text()
    assert "devices=(0 1 2 3)" in polaris and "PMI_LOCAL_RANK" in polaris
    assert "--cpu-bind list:24-31,56-63:16-23,48-55:8-15,40-47:0-7,32-39 " in polaris
    aurora = (rendered["aurora"] / "batch" / "smoke.sh").read_text()
    assert 'ZE_AFFINITY_MASK="$device"' in aurora and "PALS_LOCAL_RANKID" in aurora
    assert "export ZE_FLAT_DEVICE_HIERARCHY=FLAT" in aurora
    assert "APPTAINERENV_ZE_FLAT_DEVICE_HIERARCHY=FLAT" in aurora
    assert "devices=(0 1 2 3 4 5 6 7 8 9 10 11)" in aurora
    perl = (rendered["perlmutter"] / "batch" / "smoke.sh").read_text()
    assert (
        "--cpus-per-task=32 --gpus-per-task=1 --gpu-bind=closest podman-hpc shared-run --gpu "
        in perl
        and " -e CUDA_VISIBLE_DEVICES " in perl
        and " -e SLURM_PROCID " in perl
    )
    build = (rendered["polaris"] / "batch" / "build_image.sh").read_text()
    assert "#PBS -l singularity_fakeroot=true" in build and "HTTPS_PROXY=" in build
    assert "build/images/crossfl-cuda.def" in build


def test_linter_catches_bad_directives():
    polaris = site_for_test("polaris")
    bad = (
        "#!/bin/bash\n#PBS -l filesystems=home:flare\n#PBS -l walltime=02:00:00\n#PBS -Z x\n"
        "#SBATCH -N 1\n"
    )
    problems = sites.lint_script(polaris, bad)
    assert len(problems) == 4
    assert "flare" in problems[0] and "over the queue maximum" in problems[1]
    assert "-Z" in problems[2] and "#SBATCH" in problems[3]
    frontier = site_for_test("frontier")
    assert sites.lint_script(frontier, "#SBATCH --gpus-per-nod=8\n#SBATCH -t 1:00\n") != []


# --- atomic rendering ------------------------------------------------------------------------


def test_default_out_root_is_build_sites(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSFL_ROOT", str(tmp_path))
    (tmp_path / "deploy" / "sites").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "sites" / "local.yaml", tmp_path / "deploy" / "sites")
    monkeypatch.setattr(paths, "templates_dir", lambda: REPO / "site_templates")
    out = render.render_site("local")
    assert out == tmp_path / "build" / "sites" / "local"
    assert (out / "endpoint" / "user_config.example.yaml").is_file()


def test_failed_render_keeps_previous(tmp_path, monkeypatch):
    good = render.render_site("local", tmp_path)
    before = {p.name: p.read_bytes() for p in (good / "endpoint").iterdir()}

    def broken(*a, **k):
        raise UserError("boom")

    monkeypatch.setattr(render.engine, "render_with_endpoint", broken)
    with pytest.raises(UserError, match="boom"):
        render.render_site("local", tmp_path)
    after = {p.name: p.read_bytes() for p in (good / "endpoint").iterdir()}
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == [DIR_LOCK, "local"]


def test_failed_first_render_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise UserError("boom")

    monkeypatch.setattr(render.engine, "render_with_endpoint", broken)
    with pytest.raises(UserError):
        render.render_site("local", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_template_error_is_a_user_error(tmp_path, monkeypatch):
    tdir = tmp_path / "templates"
    shutil.copytree(REPO / "site_templates", tdir)
    (tdir / "endpoint" / "config.yaml").write_text("display_name: << no_such_value >>\n")
    monkeypatch.setattr(paths, "templates_dir", lambda: tdir)
    with pytest.raises(UserError, match="no_such_value"):
        render.render_site("local", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_multi_user_endpoint(tmp_path):
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml

    site = site_for_test("polaris").model_copy(deep=True)
    site.endpoint.mode = "multi-user"
    site.endpoint.identity_domain = "anl.gov"
    site.endpoint.environment = {"GLOBUS_COMPUTE_SITE": "polaris"}
    out = render.render_site(site, tmp_path)
    ep = out / "endpoint"
    load_config_yaml((ep / "config.yaml").read_text())
    assert "identity_mapping_config_path" in (ep / "config.yaml").read_text()
    mapping = json.loads((ep / "identity_mapping.example.json").read_text())
    assert mapping[0]["mappings"][0]["match"] == r"(.*)@anl\.gov"
    env = yaml.safe_load((ep / "user_environment.yaml").read_text())
    assert env == {"GLOBUS_COMPUTE_SITE": "polaris"}


def test_batch_without_account_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("CROSSFL_POLARIS_ACCOUNT", raising=False)
    out = render.render_site(sites.load_site("polaris"), tmp_path)
    text = (out / "batch" / "smoke.sh").read_text()
    assert "#PBS -A" not in text and "qsub -A <project>" in text
    if shutil.which("shellcheck"):
        assert subprocess.run(["shellcheck", str(out / "batch" / "smoke.sh")]).returncode == 0


def test_concurrent_renders_leave_one_good_result(tmp_path):
    import threading

    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(3):
                render.render_site("local", tmp_path)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [DIR_LOCK, "local"]
    assert render.render_user_config(tmp_path / "local", {})


def test_swap_removes_its_old_copy_whatever_a_rival_does(tmp_path, monkeypatch):
    """Another render may move the new result aside the moment it lands (a rival swap's first
    step); the previous copy this render moved aside must still be removed, not left behind
    as `.local.old.<hex>` (seen on a busy machine in the threaded test above)."""
    render.render_site("local", tmp_path)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-rival"
    elsewhere.mkdir()
    real = {"rename": os.rename, "replace": os.replace}
    rival_done: list[bool] = []

    def hooked(kind):
        def call(src, dst, *a, **k):
            real[kind](src, dst, *a, **k)
            if (
                Path(dst) == tmp_path / "local"
                and Path(src).name.startswith(".local.")
                and ".old." not in Path(src).name
                and not rival_done
            ):
                rival_done.append(True)  # the rival moves the fresh result aside
                real["rename"](tmp_path / "local", elsewhere / "local")

        return call

    monkeypatch.setattr(os, "rename", hooked("rename"))
    monkeypatch.setattr(os, "replace", hooked("replace"))
    render.render_site("local", tmp_path)
    monkeypatch.undo()
    assert rival_done, "the swap never put a fresh directory in place"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [DIR_LOCK]


@pytest.mark.slow  # five runs of the endpoint's own CLI
def test_endpoint_cli_renders_and_refuses(rendered, tmp_path):
    """The endpoint's own `render-user-config` command accepts the rendered directory, and its
    schema refuses options of the wrong form (an unknown queue, a walltime that is not
    HH:MM:SS, a name a shell would read). The facility's limits are check_request's alone
    (tests/test_facility_rules.py): the endpoint keeps no second copy of them."""
    import sys

    cli = Path(sys.executable).parent / "globus-compute-endpoint"
    ep = rendered["polaris"] / "endpoint"

    def run(opts):
        (tmp_path / "opts.json").write_text(json.dumps(opts))
        return subprocess.run(
            [
                str(cli),
                "render-user-config",
                "-t",
                str(ep / "user_config_template.yaml.j2"),
                "-s",
                str(ep / "user_config_schema.json"),
                "-o",
                str(tmp_path / "opts.json"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run({"account": "P1", "queue": "debug-scaling", "nodes_per_block": 8})
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["engine"]["provider"]["nodes_per_block"] == 8
    bad = run({"account": "P1", "queue": "nope", "nodes_per_block": 8})  # not in the catalog
    assert bad.returncode != 0 and "ValidationError" in bad.stdout + bad.stderr
    bad = run({"account": "P1", "queue": "debug", "walltime": "2h"})  # not HH:MM:SS
    assert bad.returncode != 0 and "ValidationError" in bad.stdout + bad.stderr
    ok = run({"account": "P1", "queue": "prod", "nodes_per_block": 10, "walltime": "03:00:00"})
    assert ok.returncode == 0, ok.stderr
    bad = run({"account": "P1;touch x", "queue": "prod"})  # a name a shell would read
    assert bad.returncode != 0


def test_idle_settings_reach_the_real_engine(rendered):
    """max_idletime and idle_heartbeats_soft are user options: what the dispatch policy sets
    per site reaches the engine's job status poller and the endpoint, as the endpoint's own
    loader reads them."""
    from crossfl.endpoints import load_engine_config

    default = load_engine_config(render.render_user_config(rendered["local"], {}), source="t")
    assert default.engine._job_status_kwargs["max_idletime"] == 120.0
    warm = load_engine_config(
        render.render_user_config(
            rendered["local"], {"max_idletime": 3600, "idle_heartbeats_soft": 130}
        ),
        source="t",
    )
    assert warm.engine._job_status_kwargs["max_idletime"] == 3600
    assert warm.idle_heartbeats_soft == 130
    with pytest.raises(UserError, match="max_idletime"):
        render.render_user_config(rendered["local"], {"max_idletime": -1})
