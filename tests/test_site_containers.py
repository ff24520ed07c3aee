"""Every site's container, as the engine launches it: the exact worker command globus-compute-
endpoint builds (its own `containerized_launch_cmd` and Parsl's own formatting), read with
Apptainer's mount rules (crossfl.images.mounts), must leave the image prefix, the venv, its
Python and globus-compute-endpoint visible, and show the engine's certificate and log
directories at the paths the command names. Runs over every file in deploy/sites/, so later
edits are covered. Also the batch jobs' `apptainer exec` lines and the on-site image build."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

from crossfl import images, render, sites
from crossfl.errors import UserError
from crossfl.images.layout import image_paths
from crossfl.images.mounts import (
    apptainer_mounts,
    hides_image_path,
    host_path,
    shows_host_path,
)
from crossfl.render.shell import mpi_task_line
from golden_sites import golden_site

HOME = "/home/crossfl-user"
ALL = sites.list_sites()
CONTAINER_SITES = [n for n in ALL if sites.load_site(n).container.runtime == "apptainer"]


def engine_of(site: sites.Site, tmp_path: Path):
    out = render.render_site(site, tmp_path)
    text = (out / "endpoint" / "user_config.example.yaml").read_text()
    return render.load_user_config(text).engine


def exact_launch_command(engine, run_dir: str) -> str:
    """The per-block worker command, composed by the engine's and Parsl's own code: what
    GlobusComputeEngine.start() and HighThroughputExecutor.start() do, minus the processes."""
    engine.run_dir = run_dir
    ex = engine.executor
    ex.run_dir = run_dir
    if engine.container_type:
        ex.launch_cmd = engine.containerized_launch_cmd()
    # parsl/curvezmq.py create_certificates(base_dir): os.path.join(base_dir, "certificates"),
    # called with the executor's logdir (HighThroughputExecutor.start)
    ex.cert_dir = os.path.join(ex.logdir, "certificates") if ex.encrypted else None
    ex.logconf_path = (
        os.path.join(ex.logdir, "log_config", "log_config.pkl") if ex.log_config else None
    )
    ex.all_addresses = {"10.1.2.3"}
    ex.worker_port = 54321
    ex.initialize_scaling()
    return ex._get_launch_command("0")


def worker_dirs(argv: list[str]) -> dict[str, str]:
    """The engine directories the worker command names."""
    found: dict[str, str] = {}
    for i, word in enumerate(argv):
        if word == "--cert_dir" and argv[i + 1] != "None":
            found["cert_dir"] = argv[i + 1]
        for flag in ("--logdir", "--logconf"):
            if word.startswith(flag + "=") and word.split("=", 1)[1] != "None":
                found[flag[2:]] = word.split("=", 1)[1]
    return found


def split_apptainer(cmd: str, image: str) -> tuple[list[str], list[str]]:
    argv = shlex.split(cmd)
    assert argv[:2] == ["apptainer", "run"], cmd
    at = argv.index(image)
    return argv[2:at], argv[at + 1 :]


def site_env(site: sites.Site) -> dict[str, str]:
    return {**site.proxy.env(), **site.env, **site.container.env}


@pytest.mark.parametrize("name", CONTAINER_SITES)
def test_the_engines_launch_command_keeps_image_and_engine_dirs_visible(
    name, tmp_path, stub_interfaces
):
    site = golden_site(name, "per-device")  # the engine's workers in the image
    engine = engine_of(site, tmp_path)
    run_dir = f"{HOME}/.globus_compute/{site.deploy.endpoint_name}"
    cmd = exact_launch_command(engine, run_dir)
    options, worker = split_apptainer(cmd, site.image())
    assert worker[:3] == [
        "globus-compute-endpoint",
        "python-exec",
        "parsl.executors.high_throughput.process_worker_pool",
    ]
    mounts = apptainer_mounts(options, home=HOME, env=site_env(site))
    for path in image_paths(images.get_arch(site.arch)):
        assert hides_image_path(path, mounts) is None, (name, path, hides_image_path(path, mounts))
    dirs = worker_dirs(worker)
    assert "logdir" in dirs and (not engine.encrypted or "cert_dir" in dirs), worker
    for what, path in dirs.items():
        assert path.startswith(run_dir), (what, path)
        assert shows_host_path(path, mounts), (name, what, path, host_path(path, mounts))


@pytest.mark.parametrize("name", CONTAINER_SITES)
def test_batch_jobs_apptainer_exec_keeps_the_image_visible(name, tmp_path):
    """The ranks' `apptainer exec`: of the batch scripts, and of an MPI task's line."""
    site = sites.load_site(name)
    out = render.render_site(site, tmp_path)
    mpi = mpi_task_line(site, ["python", "-m", "crossfl.client", "run-task", "T", "O"])
    for script in ("smoke.sh", "client.sh", "MPI task"):
        text = mpi if script == "MPI task" else (out / "batch" / script).read_text()
        line = next(ln for ln in text.splitlines() if "apptainer exec" in ln)
        line = line.split("$PARSL_MPI_PREFIX ", 1)[-1]
        argv = shlex.split(line)
        at = argv.index("exec")
        image = next(w for w in argv[at:] if w.endswith(".sif"))
        options = argv[at + 1 : argv.index(image)]
        mounts = apptainer_mounts(options, home=HOME, env=site_env(site))
        for path in image_paths(images.get_arch(site.arch)):
            assert hides_image_path(path, mounts) is None, (name, script, path)


def test_the_mount_rules_catch_what_they_are_for(tmp_path, stub_interfaces):
    """Polaris as it was (host /opt bound; the engine's own apptainer type under --fakeroot):
    the image prefix vanishes and the certificate directory is not where the command says."""
    site = sites.load_site("polaris")
    old = apptainer_mounts(["--nv", "--fakeroot", "-B", "/opt", "-B", "/var/run/palsd/"], home=HOME)
    assert hides_image_path("/opt/crossfl/venv/bin/python", old).src == "/opt"
    engine = engine_of(site, tmp_path)
    engine.container_type, engine.container_uri = "apptainer", site.image()
    engine.container_cmd_options = "--nv --fakeroot -B /opt/cray/pe/pals"
    run_dir = f"{HOME}/.globus_compute/{site.deploy.endpoint_name}"
    options, worker = split_apptainer(exact_launch_command(engine, run_dir), site.image())
    mounts = apptainer_mounts(options, home=HOME)
    cert = worker_dirs(worker)["cert_dir"]
    assert not shows_host_path(cert, mounts)  # home is at /root under --fakeroot
    assert host_path("/root/.globus_compute", mounts) == f"{HOME}/.globus_compute"
    # without --fakeroot the home directory is mounted at its own path
    assert shows_host_path(cert, apptainer_mounts(["--nv"], home=HOME))
    # binds from the environment count as much as -B
    env = apptainer_mounts([], home=HOME, env={"APPTAINER_BINDPATH": "/opt,/x:/y"})
    assert hides_image_path("/opt/crossfl", env).why == "APPTAINER_BINDPATH"


def test_a_site_whose_binds_hide_the_image_is_refused(tmp_path):
    data = yaml.safe_load(
        (Path(sites.__file__).parents[3] / "deploy" / "sites" / "polaris.yaml").read_text()
    )
    data["container"]["binds"] = ["/opt", "/eagle"]
    path = tmp_path / "polaris.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        render.render_site(sites.load_site(path), tmp_path / "out")
    text = str(err.value)
    assert "container.binds" in text and "hides the image's /opt/crossfl" in text
    assert "/opt/cray/pe/pals" in text  # the fix


def test_a_custom_runtime_renders_its_command(tmp_path, stub_interfaces):
    data = yaml.safe_load(
        (Path(sites.__file__).parents[3] / "deploy" / "sites" / "local.yaml").read_text()
    )
    data["container"] = {
        "runtime": "custom",
        "images": {"cpu": "/img"},
        "command": "wrap --bind {EXECUTOR_RUNDIR} /img {EXECUTOR_LAUNCH_CMD}",
    }
    path = tmp_path / "local-custom.yaml"
    path.write_text(yaml.safe_dump(data))
    engine = engine_of(sites.load_site(path), tmp_path / "out")
    assert engine.container_type == "custom"
    cmd = exact_launch_command(engine, "/runs/x")
    assert cmd.startswith("wrap --bind /runs/x /img globus-compute-endpoint python-exec ")
    for bad, says in [
        ("wrap /img", "{EXECUTOR_LAUNCH_CMD}"),
        ("wrap {rundir} {EXECUTOR_LAUNCH_CMD}", "no braces"),
    ]:
        data["container"]["command"] = bad
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(UserError, match=re.escape(says)):
            sites.load_site(path)


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in CONTAINER_SITES
        if (sites.load_site(n).container.build or None) is not None
        and sites.load_site(n).container.build.on_compute_node
    ],
)
def test_the_site_image_build_creates_its_dirs_and_passes_the_proxies(name, tmp_path):
    site = sites.load_site(name)
    text = (render.render_site(site, tmp_path) / "batch" / "build_image.sh").read_text()
    build_at = text.index("apptainer build")
    for var in ("APPTAINER_TMPDIR", "APPTAINER_CACHEDIR"):
        if var in site.container.build.env:
            assert 0 <= text.index(f'mkdir -p "${var}"') < build_at, var
    build = text[build_at:]
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if var in site.proxy.env():
            assert f'--build-arg "{var}=${var}"' in build, var
            assert f"export {var}=" in text[:build_at]
