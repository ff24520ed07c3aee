"""What `crossfl doctor` and the on-site build read from a scheduler, from recorded answers
(tests/golden/scheduler_answers/, see its README for the formats and sources): PBS Pro's
`qstat -Qf` / `qstat -x -f` / `qstat -B` / `qsub`, ALCF's sbank, Slurm's scontrol and
sacctmgr; then the comparison of the catalog with what the scheduler says, as the table
prints it (golden)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crossfl import schedulers
from crossfl.deploy.doctor import Report, compare_limits, table_lines
from crossfl.schedulers.pbs import parse_full
from crossfl.sites import Queue

ANSWERS = Path(__file__).parent / "golden" / "scheduler_answers"
PBS = schedulers.get("pbs")
SLURM = schedulers.get("slurm")


def answer(name: str) -> str:
    return (ANSWERS / name).read_text()


def assert_golden(name: str, text: str) -> None:
    path = ANSWERS / name
    if os.environ.get("CROSSFL_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"no golden file {name}: run with CROSSFL_UPDATE_GOLDEN=1"
    assert text == path.read_text()


# -- PBS Pro --------------------------------------------------------------------------------------


def test_qstat_full_layout() -> None:
    prod = parse_full(answer("qstat-Qf-prod.txt"))["prod"]
    assert prod["queue_type"] == "Route"
    # a long value continued on a tab-indented line is one value again
    assert prod["route_destinations"] == (
        "small,medium,large,backfill-small,backfill-medium,backfill-large"
    )
    job = parse_full(answer("qstat-xf-finished.txt"))
    assert list(job) == ["4127733.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"]
    assert next(iter(job.values()))["comment"].endswith("and finished")


@pytest.mark.parametrize(
    "name, walltime, nodes, min_nodes, shown",
    [
        ("debug", 3600, 2, 1, "max.walltime=01:00:00 max.nodect=2 min.nodect=1"),
        (
            "prod",
            24 * 3600,
            496,
            10,
            "max.walltime=24:00:00 max.nodect=496 min.nodect=10 (routes to "
            "small, medium, large, backfill-small, backfill-medium, "
            "backfill-large)",
        ),
        ("capacity", 168 * 3600, 4, 1, "max.walltime=168:00:00 max.nodect=4 min.nodect=1"),
    ],
)
def test_qstat_queue_limits(
    name: str, walltime: int, nodes: int, min_nodes: int, shown: str
) -> None:
    assert PBS.limits_command(name) == f"qstat -Qf {name} 2>&1"
    got = PBS.parse_limits(name, answer(f"qstat-Qf-{name}.txt"), 0)
    assert (got.found, got.max_walltime, got.max_nodes, got.min_nodes) == (
        True,
        walltime,
        nodes,
        min_nodes,
    )
    assert got.shown == shown


def test_qstat_unknown_queue_and_no_answer() -> None:
    got = PBS.parse_limits("nosuch", answer("qstat-Qf-unknown.txt"), 170)
    assert got.found is False and got.shown == "qstat: unknown queue nosuch"
    got = PBS.parse_limits("debug", "qstat: cannot connect to server polaris-pbs-01 (errno=111)", 2)
    assert got.found is None and "cannot connect" in got.shown


def test_qstat_server_status() -> None:
    assert (
        PBS.parse_status(answer("qstat-B.txt"), 0)
        == "PBS 2022.1.3; server polaris-pbs-01 Active, 1437 jobs"
    )
    assert PBS.parse_status("qstat: command not found", 127) is None


def test_qsub_and_one_job() -> None:
    job_id = PBS.parse_job_id(answer("qsub.txt"))
    assert job_id == "4127733.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
    assert PBS.parse_job_id("qsub: Job violates queue and/or server resource limits") is None
    assert PBS.job_command(job_id) == f"qstat -x -f {job_id} 2>&1"
    assert PBS.job_output("crossfl-smoke-polaris", job_id) == "crossfl-smoke-polaris.o4127733"
    running = PBS.parse_job(job_id, answer("qstat-xf-running.txt"), 0)
    assert (running.state, running.done) == ("R", False)
    assert running.detail.startswith("Job run at")
    done = PBS.parse_job(job_id, answer("qstat-xf-finished.txt"), 0)
    assert (done.state, done.done, done.ok) == ("F", True, True)
    assert done.detail.startswith("Exit_status=0; Job run at")
    failed = PBS.parse_job("4127801", answer("qstat-xf-failed.txt"), 0)  # matched by number
    assert (failed.done, failed.ok, failed.detail.split(";")[0]) == (True, False, "Exit_status=255")
    gone = PBS.parse_job("99", answer("qstat-xf-unknown.txt"), 153)
    assert gone.state == "UNKNOWN" and gone.done and gone.ok is None


def test_sbank_account() -> None:
    line = PBS.account_command("MyProject")
    assert "sbank-list-allocations -p MyProject -r all" in line
    ok = PBS.parse_account("MyProject", answer("sbank-list-allocations.txt"), 0)
    assert ok.valid is True
    assert ok.detail == (
        "sbank-list-allocations: MyProject has polaris 43,967.2, aurora "
        "415,229.7 (node hours available)"
    )
    none = PBS.parse_account("Other", answer("sbank-list-allocations-none.txt"), 0)
    assert none.valid is False and "no allocation of project Other" in none.detail
    absent = PBS.parse_account("MyProject", "CROSSFL_NO_SBANK\n", 0)
    assert absent.valid is None and "PBS has no command listing your projects" in absent.detail
    assert PBS.account_command(None) is None
    assert PBS.parse_account(None, "", 0).valid is None


# -- Slurm ----------------------------------------------------------------------------------------


def test_slurm_partition_and_qos_limits() -> None:
    debug = SLURM.parse_limits("debug", answer("scontrol-show-partition-debug.txt"), 0)
    assert (debug.found, debug.max_walltime, debug.max_nodes, debug.min_nodes) == (
        True,
        None,
        None,
        None,
    )
    batch = SLURM.parse_limits("batch", answer("scontrol-show-partition-batch.txt"), 0)
    assert (batch.max_walltime, batch.max_nodes, batch.min_nodes) == (7200, 9408, 1)
    assert batch.shown == "MaxTime=02:00:00 MaxNodes=9408 MinNodes=1"
    assert SLURM.limits_command("regular", "qos").startswith("sacctmgr -n -P show qos regular ")
    qos = SLURM.parse_limits("gpu_regular", answer("sacctmgr-show-qos.txt"), 0, "qos")
    assert (qos.found, qos.max_walltime, qos.max_nodes) == (True, 48 * 3600, None)
    dbg = SLURM.parse_limits("gpu_debug", answer("sacctmgr-show-qos-debug.txt"), 0, "qos")
    assert (dbg.max_walltime, dbg.max_nodes) == (1800, 8)
    assert SLURM.parse_limits("nope", "", 0, "qos").found is False
    assert SLURM.parse_limits("nope", "Partition nope not found", 1).found is False


def test_slurm_jobs() -> None:
    assert SLURM.parse_job_id("1234;cluster\n") == "1234"
    running = SLURM.parse_job(
        "7", "JobId=7 JobName=x JobState=PENDING Reason=Priority ExitCode=0:0", 0
    )
    assert (running.done, running.detail) == (False, "Reason=Priority")
    done = SLURM.parse_job("7", "JobId=7 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0", 0)
    assert (done.done, done.ok, done.detail) == (True, False, "ExitCode=1:0 Reason=NonZeroExitCode")
    # gone from slurmctld's memory: sacct's row
    old = SLURM.parse_job(
        "7", "slurm_load_jobs error: Invalid job id specified\nCOMPLETED|0:0\n", 1
    )
    assert (old.state, old.done, old.ok) == ("COMPLETED", True, True)
    assert SLURM.job_output("crossfl-smoke-x", "7") == "crossfl-smoke-x-7.out"


# -- the catalog against the scheduler, as the table prints it -------------------------------------


def test_catalog_against_scheduler_golden() -> None:
    """Polaris' published limits against qstat -Qf; a catalog stricter than the scheduler
    (warn), one looser (FAIL: the kit would let through what the scheduler refuses), a queue
    the scheduler lacks, and one it cannot be asked about."""
    cases = [
        (
            "debug",
            Queue(max_walltime="01:00:00", max_nodes=2),
            PBS.parse_limits("debug", answer("qstat-Qf-debug.txt"), 0),
            True,
        ),
        (
            "prod",
            Queue(max_walltime="24:00:00", max_nodes=496),
            PBS.parse_limits("prod", answer("qstat-Qf-prod.txt"), 0),
            False,
        ),
        (
            "capacity",
            Queue(max_walltime="168:00:00", max_nodes=4),
            PBS.parse_limits("capacity", answer("qstat-Qf-capacity.txt"), 0),
            False,
        ),
        (
            "debug",
            Queue(max_walltime="00:30:00", max_nodes=1),
            PBS.parse_limits("debug", answer("qstat-Qf-debug.txt"), 0),
            True,
        ),
        (
            "batch",
            Queue(max_walltime="12:00:00"),
            SLURM.parse_limits("batch", answer("scontrol-show-partition-batch.txt"), 0),
            True,
        ),
        (
            "nosuch",
            Queue(max_walltime="01:00:00"),
            PBS.parse_limits("nosuch", answer("qstat-Qf-unknown.txt"), 170),
            True,
        ),
        (
            "gpu_debug",
            Queue(max_walltime="00:30:00", max_nodes=8),
            SLURM.parse_limits(
                "gpu_debug", "sacctmgr: error: Problem talking to the database", 1, "qos"
            ),
            False,
        ),
    ]
    report = Report("recorded")
    verdicts = []
    for name, cat, got, selected in cases:
        status, detail = compare_limits(cat, got, "queue", selected)
        report.add(f"queue {name}", status, detail)
        verdicts.append(status)
    assert verdicts == ["ok", "ok", "ok", "warn", "FAIL", "FAIL", "warn"]
    text = "\n".join(table_lines(report)) + "\n"
    assert all(len(line) <= 80 for line in text.splitlines())
    assert_golden("doctor-queues.txt", text)


def test_perlmutter_qos_asked_by_the_name_slurm_lists() -> None:
    """Perlmutter's catalog says `regular`, the QOS a GPU job asks for; Slurm lists it as
    gpu_regular (scheduler_name): doctor asks sacctmgr for that name and compares its limits."""
    from crossfl import sites
    from crossfl.deploy.doctor import Report, _Doctor
    from crossfl.deploy.remote import CommandResult

    class Answers:
        t = None
        asked: list[str] = []

        def run(self, script: str, **_: object) -> CommandResult:
            self.asked.append(script)
            name = script.split("show qos ")[1].split()[0]
            return CommandResult(f"{name}|2-00:00:00||||\n", "", 0)

    site = sites.load_site("perlmutter")
    fake = Answers()
    report = Report(site.name)
    _Doctor(site, fake, report).queues()  # type: ignore[arg-type]
    assert any("show qos gpu_regular " in a for a in fake.asked)
    assert not any("show qos regular " in a for a in fake.asked)
    regular = next(c for c in report.checks if c.name == "queue regular")
    assert regular.status == "ok" and "scheduler says MaxWall=2-00:00:00" in regular.detail
