"""The dispatch policy's start estimates for a facility, asked of its scheduler on the login
node over crossfl.deploy's SSH path: the real sshd (tests/sshd.py) in front of the real
one-node Slurm (tests/slurm_cluster.py), as the `local-slurm-ssh` site reaches them. What
PBS Pro answers is tested from recorded `qstat -f` text in test_schedulers.py."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from crossfl import sites
from crossfl.server.site_executors import PILOT_NAMES, LoginNode, SchedulerControl
from sshd import SshServer, skip_reason, start_sshd, stop_sshd

SITE = "local-slurm-ssh"


@pytest.fixture(scope="module")
def slurm_sshd(slurm_cluster, tmp_path_factory) -> Iterator[SshServer]:
    """An sshd whose sessions reach the test Slurm (SLURM_CONF): its "login node", in a
    time zone five hours behind this machine's UTC (as Frontier's is behind a European
    laptop): the scheduler's times must be read in one zone."""
    why = skip_reason()
    if why:
        pytest.skip(why)
    server, proc = start_sshd(
        tmp_path_factory.mktemp("sshd"), env={"SLURM_CONF": str(slurm_cluster.conf), "TZ": "EST+5"}
    )
    try:
        yield server
    finally:
        stop_sshd(proc)


@pytest.fixture
def remote_site(slurm_sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> sites.Site:
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(slurm_sshd.ssh_config))
    monkeypatch.setenv("CROSSFL_SSH_PORT", str(slurm_sshd.port))
    monkeypatch.setenv("CROSSFL_SSH_CHANNEL", "fabric")
    return sites.load_site(SITE)


def control_of(site: sites.Site, warned: list[str]) -> SchedulerControl:
    plan = SimpleNamespace(
        name=SITE, catalog=site, user_options={"walltime": "00:05:00"}, held_nodes=1, mpi=False
    )
    return SchedulerControl(plan, run=LoginNode(site), every_s=0.0, warn=warned.append)  # type: ignore[arg-type]


def squeue_start(cluster, job_id: str) -> str:
    p = subprocess.run(
        ["squeue", "-h", "--start", "-j", job_id, "-o", "%S"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=30,
    )
    return p.stdout.strip()


def test_a_facility_site_gets_slurms_estimate_for_its_queued_pilot_over_ssh(
    slurm_cluster, slurm_sshd, remote_site, tmp_path
):
    """No pilot queued: `sbatch --test-only` on the login node (an idle node: about now).
    The node held by a 10-minute job and a pilot of the endpoint's name pending behind it:
    `squeue --start` on the login node, the pilot's expected start (the holder's end), once
    the scheduler has computed one (polled here, with a deadline, before asking)."""
    warned: list[str] = []
    control = control_of(remote_site, warned)
    logins = slurm_sshd.logins()
    idle = control.start_estimate_s()
    assert idle is not None and idle < 300, warned
    assert slurm_sshd.logins() == logins + 2  # squeue, then the test submission, over SSH
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nsleep 600\n")
    env = slurm_cluster.env()
    sbatch = ["sbatch", "--parsable", "--exclusive", "-N1", "-p", slurm_cluster.partition]
    holder = (
        subprocess.run(
            [*sbatch, "-t", "10", "-J", "holder", str(script)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=True,
        )
        .stdout.split(";")[0]
        .strip()
    )
    name = PILOT_NAMES[False] + "0.1765000000.5"
    pilot = (
        subprocess.run(
            [*sbatch, "-t", "5", "-J", name, str(script)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            check=True,
        )
        .stdout.split(";")[0]
        .strip()
    )
    try:
        deadline = time.monotonic() + 120
        while slurm_cluster.job_info(holder).get("JobState") != "RUNNING":
            assert time.monotonic() < deadline, slurm_cluster.job_info(holder)
            time.sleep(0.5)
        deadline = time.monotonic() + 120
        while squeue_start(slurm_cluster, pilot) in ("", "N/A"):
            assert time.monotonic() < deadline, "Slurm computed no start for the pilot"
            time.sleep(1)
        logins = slurm_sshd.logins()
        estimate = control.start_estimate_s()
        # behind a 10-minute holder that has just started: more than 5 minutes, at most 10
        assert estimate is not None and 300 < estimate <= 600, estimate
        assert slurm_sshd.logins() == logins + 1  # the queued pilot answered: no test submission
        assert warned == []
    finally:
        subprocess.run(["scancel", holder, pilot], env=env, check=False)
        for job in (holder, pilot):
            slurm_cluster.wait(job)


def test_an_unknown_host_key_costs_the_estimate_not_the_run(slurm_sshd, remote_site, monkeypatch):
    """The login node's key is in no known_hosts: no login, no estimate, one
    warning naming the site however often the policy asks, and no exception."""
    empty = slurm_sshd.root / "known_hosts_empty"
    empty.write_text("")
    cfg = slurm_sshd.client_config(name="ssh-config-unknown-key", known_hosts=empty)
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(cfg))
    warned: list[str] = []
    control = control_of(remote_site, warned)
    logins = slurm_sshd.logins()
    assert control.start_estimate_s() is None
    assert control.start_estimate_s() is None
    assert slurm_sshd.logins() == logins
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"site {SITE}: no start estimate") and "host key" in warned[0]
    assert warned[0].count(SITE) == 1


def test_a_facility_site_asks_its_login_node_and_a_local_one_asks_here(remote_site):
    """open_site's control of a batch site: a site that does not run here asks its login
    node (over SSH), one that runs here asks this machine."""
    from crossfl.server.site_executors import run_here, scheduler_control

    plan = SimpleNamespace(name=SITE, catalog=remote_site, runs_here=False)
    control = scheduler_control(plan)  # type: ignore[arg-type]
    assert control is not None and isinstance(control.run, LoginNode)
    assert control.run.site is remote_site
    here = scheduler_control(SimpleNamespace(name=SITE, catalog=remote_site, runs_here=True))  # type: ignore[arg-type]
    assert here is not None and here.run is run_here
