"""The schedulers (crossfl.schedulers): every one keeps the interface, and a new one is one
class. LSF (Parsl's LSFProvider) is added here, in the test, with nothing else changed: a
site naming it loads, renders, passes the linter, and the endpoint builds its provider. A
scheduler and its launcher are driven from value objects alone (JobSpec, BatchJob, Binding),
with no site file and no crossfl.sites."""

from __future__ import annotations

import re
from pathlib import Path

import parsl.providers
import pytest
import yaml

from crossfl import paths, render, schedulers, sites
from crossfl.errors import UserError
from crossfl.schedulers import BatchJob, Binding, JobSpec, Scheduler
from crossfl.schedulers.base import Fields
from crossfl.schedulers.launchers import LAUNCHERS

REPO = Path(__file__).resolve().parents[1]


class Lsf(Scheduler):
    """IBM LSF as Summit ran it: bsub/bjobs/bkill, `#BSUB`, -W [H:]M."""

    name = "lsf"
    title = "LSF"
    provider = "LSFProvider"
    directive_prefix = "#BSUB"
    options = frozenset({"-P", "-q", "-W", "-nnodes", "-J", "-o", "-alloc_flags"})
    option_examples = "e.g. -alloc_flags"
    named_flags = {"account": "-P", "queue": "-q"}
    account_word = "project"
    submit = "bsub"
    query = "bjobs 2>&1"
    cancel = "bkill"
    local_rank_env = "JSM_NAMESPACE_LOCAL_RANK"
    launchers = ("single", "mpiexec")

    def directive_walltime(self, directive: str) -> str | None:
        words = directive.split()
        return words[1] if words[0] == "-W" and len(words) > 1 else None

    def parse_time(self, text: str) -> int:
        m = re.fullmatch(r"(?:(\d+):)?(\d+)", text)
        if not m:
            raise ValueError(f"-W {text!r} is not [H:]M")
        return int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60

    def header(self, spec: JobSpec, job: BatchJob) -> list[str]:
        h, m, _ = job.walltime.split(":")
        return [
            "#!/bin/bash",
            f"#BSUB -J {job.name}",
            f"#BSUB -nnodes {job.nodes}",
            f"#BSUB -W {int(h)}:{m}",
            f"#BSUB -o {job.name}.%J",
            *(f"#BSUB {d}" for d in job.directives),
            *self.account_hint(spec, job),
        ]

    def provider_fields(self, spec: JobSpec, var: dict[str, str]) -> Fields:
        return [("project", var["account"]), ("queue", var["queue"]), *self.block_fields(spec, var)]


SUMMIT = {
    "name": "summit",
    "scheduler": "lsf",
    "account": "abc123",
    "queue": "batch",
    "walltime": "01:00:00",
    "queues": {"batch": {"max_walltime": "02:00:00"}},
    "accelerator": {"vendor": "cuda", "devices_per_node": 6, "bind": "local-rank"},
    "directives": ["-alloc_flags gpumps"],
    "launcher": {"type": "mpiexec"},
}


@pytest.fixture
def lsf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """LSF registered for this test only, and a catalog holding one LSF site."""
    schedulers.register(Lsf)
    catalog = tmp_path / "deploy" / "sites"
    catalog.mkdir(parents=True)
    (catalog / "summit.yaml").write_text(yaml.safe_dump(SUMMIT))
    monkeypatch.setenv("CROSSFL_ROOT", str(tmp_path))
    monkeypatch.delenv("CROSSFL_SITE_OVERRIDES", raising=False)
    monkeypatch.setattr(paths, "templates_dir", lambda: REPO / "site_templates")
    yield catalog
    schedulers.unregister("lsf")


def test_a_scheduler_added_in_one_class_loads_renders_and_builds(lsf: Path, tmp_path: Path) -> None:
    site = sites.load_site("summit")
    assert isinstance(site.sched, Lsf)
    out = render.render_site(site, tmp_path / "out")
    smoke = (out / "batch" / "smoke.sh").read_text()
    assert smoke.startswith("#!/bin/bash\n#BSUB -J crossfl-smoke-summit\n#BSUB -nnodes 1\n")
    assert "#BSUB -P abc123\n#BSUB -q batch\n#BSUB -alloc_flags gpumps\n" in smoke
    assert "JSM_NAMESPACE_LOCAL_RANK" in smoke and "Submit: bsub smoke.sh" in smoke
    for script in ("smoke.sh", "client.sh"):
        assert sites.lint_script(site, (out / "batch" / script).read_text()) == []
    assert sites.lint_script(site, "#BSUB -W 3:00\n#SBATCH -N 1\n#BSUB -Z\n") == [
        "line 1: walltime 3:00 over the queue maximum 02:00:00",
        "line 2: #SBATCH directive in a lsf script",
        "line 3: bsub has no option '-Z': check `man bsub` (e.g. -alloc_flags)",
    ]

    text = render.render_user_config(out, {"walltime": "00:30:00"})
    engine = render.load_user_config(text).engine
    provider = engine.executor.provider
    assert isinstance(provider, parsl.providers.LSFProvider)
    assert (provider.project, provider.queue, provider.walltime) == ("abc123", "batch", "00:30:00")
    assert type(provider.launcher).__name__ == "MpiExecLauncher"
    assert "#BSUB -alloc_flags gpumps" in provider.scheduler_options


def test_a_site_file_may_name_only_known_schedulers(lsf: Path) -> None:
    (lsf / "bad.yaml").write_text(yaml.safe_dump({**SUMMIT, "name": "bad", "directives": ["-Z x"]}))
    with pytest.raises(UserError) as info:
        sites.load_site("bad")
    assert info.value.field == "directives[0]" and "bsub has no option '-Z'" in info.value.message
    schedulers.unregister("lsf")
    with pytest.raises(UserError) as info:
        sites.load_site("summit")
    assert info.value.field == "scheduler" and "unknown scheduler 'lsf'" in info.value.message
    assert "local, pbs, slurm" in info.value.fix


@pytest.mark.parametrize("name", schedulers.names())
def test_every_scheduler_keeps_the_interface(name: str) -> None:
    s = schedulers.get(name)
    assert s.name == name and s.title
    assert isinstance(getattr(parsl.providers, s.provider), type)
    assert set(s.launchers) <= {"srun", "mpiexec", "single"}
    if not s.batch:
        return
    assert s.directive_prefix and s.submit and s.query and s.cancel and s.local_rank_env
    assert s.directive_problem("--no-such-option") is not None
    for flag in s.named_flags.values():
        assert s.directive_problem(f"{flag} x") is None, flag
    site = sites.load_site(
        next(n for n in sites.list_sites() if sites.load_site(n).scheduler == name)
    )
    header = s.header(
        sites.job_spec(site), BatchJob("j", 2, "00:10:00", ["-A x"], 4, account_hint=True)
    )
    assert header[0].startswith("#!/bin/bash")
    assert all(line.startswith((s.directive_prefix + " ", "#")) for line in header[1:])
    assert sites.lint_script(site, "\n".join(header)) == []


def test_walltimes() -> None:
    slurm = schedulers.get("slurm")
    assert [slurm.parse_time(t) for t in ("30", "1:30", "2:00:00", "1-0", "1-2:3", "1-0:0:5")] == [
        1800,
        90,
        7200,
        86400,
        93780,
        86405,
    ]
    assert schedulers.parse_walltime("01:02:03") == 3723
    with pytest.raises(ValueError, match="HH:MM:SS"):
        schedulers.parse_walltime("2h")
    with pytest.raises(ValueError, match="Slurm time"):
        slurm.parse_time("2h")


def test_start_estimates_are_read_as_each_scheduler_prints_them() -> None:
    """Slurm: `sbatch --test-only` and `squeue --start`; PBS Pro: a queued job's
    `estimated.start_time` in `qstat -f` (ctime form). What the dispatch policy reads."""
    from datetime import datetime

    from crossfl.schedulers.pbs import PbsPro
    from crossfl.schedulers.slurm import Slurm

    slurm, pbs = Slurm(), PbsPro()
    line = slurm.start_test_command(nodes=2, walltime_s=5400, queue="batch", account="abc 1")
    assert line == (
        "sbatch --test-only --nodes=2 --time=90:00 --partition=batch '--account=abc 1' "
        "--wrap=true 2>&1"
    )
    said = "sbatch: Job 4242 to start at 2026-12-07T18:05:11 using 64 processors on nodes x"
    assert slurm.parse_start(said, 0) == datetime(2026, 12, 7, 18, 5, 11)
    assert slurm.parse_start("sbatch: error: invalid partition", 1) is None
    assert slurm.pending_start_command("77") == "squeue --start -h -j 77 -o %S 2>&1"
    assert slurm.parse_start("2026-12-08T01:00:00\n", 0) == datetime(2026, 12, 8, 1, 0, 0)
    assert slurm.parse_start("N/A\n", 0) is None
    assert pbs.start_test_command(nodes=1, walltime_s=60, queue="prod", account=None) is None
    qstat = (
        "Job Id: 123.polaris-pbs-01\n"
        "    job_state = Q\n"
        "    queue = prod\n"
        "    estimated.start_time = Fri Oct  4 15:30:00 2024\n"
        "    estimated.exec_vnode = (x3001c0s1b0n0:ncpus=64)\n"
    )
    assert pbs.pending_start_command("123.polaris-pbs-01") == "qstat -f 123.polaris-pbs-01 2>&1"
    assert pbs.parse_start(qstat, 0) == datetime(2024, 10, 4, 15, 30, 0)
    assert pbs.parse_start("Job Id: 1.x\n    job_state = Q\n", 0) is None


SCHEDULERS_ONLY = """
import json, sys
from crossfl import schedulers
from crossfl.schedulers import BatchJob, Binding, JobSpec
from crossfl.schedulers.launchers import LAUNCHERS

spec = JobSpec(site="nowhere", account="abc", queue="gpu", devices_per_node=4,
               cpus_per_node=64, select_options="system=x", filesystems=("home", "eagle"),
               directives=("--exclusive",))
job = BatchJob("j", 2, "00:30:00", [], ranks_per_node=4, cpus_per_rank=16)
bound = Binding(cpus_per_node=64, cpu_sets=("0-15", "16-31", "32-47", "48-63"))
slurm = schedulers.get("slurm")
out = {
    "slurm": slurm.header(spec, job),
    "slurm_pilot": slurm.directives(spec, for_pilot=True),
    "slurm_submit": slurm.submit_command("job.sh"),
    "pbs": schedulers.get("pbs").header(spec, job),
    "srun": LAUNCHERS["srun"].words(bound, 2, 4),
    "mpiexec": LAUNCHERS["mpiexec"].words(bound, 2, 4),
    "sites": sorted(m for m in sys.modules if m.startswith("crossfl.sites")),
}
print(json.dumps(out))
"""


def test_a_scheduler_is_driven_from_values_alone(tmp_path: Path) -> None:
    """Headers, pilot directives, the submit line and launcher lines from JobSpec, BatchJob
    and Binding only: in a fresh interpreter, in a directory with no catalog, without
    crossfl.sites ever imported."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CROSSFL_ROOT"}
    proc = subprocess.run(
        [sys.executable, "-c", SCHEDULERS_ONLY],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["sites"] == []
    assert out["slurm"] == [
        "#!/bin/bash",
        "#SBATCH -J j",
        "#SBATCH -N 2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH -t 00:30:00",
        "#SBATCH -o j-%j.out",
    ]
    assert out["slurm_pilot"] == ["--gpus-per-node=4", "--exclusive"]
    assert out["slurm_submit"] == "sbatch --parsable job.sh 2>&1"
    assert out["pbs"] == [
        "#!/bin/bash -l",
        "#PBS -N j",
        "#PBS -l select=2:system=x",
        "#PBS -l walltime=00:30:00",
        "#PBS -j oe",
    ]
    assert out["srun"] == [
        "srun",
        "--nodes=2",
        "--ntasks=8",
        "--ntasks-per-node=4",
        "--cpus-per-task=16",
        "--cpu-bind=mask_cpu:0xffff,0xffff0000,0xffff00000000,0xffff000000000000",
    ]
    assert out["mpiexec"] == [
        "mpiexec",
        "-n",
        "8",
        "--ppn",
        "4",
        "--cpu-bind",
        "list:0-15:16-31:32-47:48-63",
    ]


def test_a_scheduler_writes_what_the_spec_holds() -> None:
    """Named directives come from the spec's names, resources from what a job holds: a
    shared node asks for its part (never --exclusive), PBS names the filesystems, and the
    account hint names the spec's site."""
    slurm, pbs = schedulers.get("slurm"), schedulers.get("pbs")
    shared = JobSpec(site="s", qos="shared", devices_per_node=1, cpus_per_node=32, shared_node=True)
    assert slurm.directives(shared, for_pilot=False) == [
        "-q shared",
        "--gpus-per-node=1",
        "--cpus-per-task=32",
    ]
    var = {k: f"{{{{ {k} }}}}" for k in ("account", "walltime", "nodes_per_block", "max_blocks")}
    fields = dict(slurm.provider_fields(shared, var))  # no queue option: no partition field
    assert fields["exclusive"] == "false" and "partition" not in fields
    whole = JobSpec(site="s", filesystems=("home", "eagle"), cpus_per_node=64, init_blocks=1)
    assert pbs.directives(whole, for_pilot=True) == ["-l filesystems=home:eagle"]
    pbs_fields = dict(pbs.provider_fields(whole, {**var, "queue": "{{ queue }}"}))
    assert (pbs_fields["cpus_per_node"], pbs_fields["init_blocks"]) == ("64", "1")
    hint = slurm.header(whole, BatchJob("j", 1, "00:10:00", [], account_hint=True))
    assert hint[-1].startswith("# deploy/sites/overrides/s.yaml")
    assert pbs.directive_filesystems("-l walltime=01:00:00,filesystems=home:grand") == [
        "home",
        "grand",
    ]
    gpus = Binding(cpus_per_node=56, scheduler_binds_gpus=True, cpu_sets=("1-7",) * 8)
    assert LAUNCHERS["srun"].rank_options(gpus, 8) == [
        "--cpus-per-task=7",
        "--gpus-per-task=1",
        "--gpu-bind=closest",
    ]
    assert LAUNCHERS["srun"].fields(Binding(cpus_per_node=8, options="--mpi=pmi2")) == [
        ("overrides", '"-c 8 --mpi=pmi2"')
    ]


def test_queued_pilots_starts_are_the_users_own_endpoint_jobs() -> None:
    """The estimates the dispatch policy takes for a site's next pilot: the login user's
    queued jobs named as the endpoint's Parsl pilots; other users' jobs, other names, jobs
    not queued and jobs without an estimate are left out. PBS Pro from recorded `qstat -f`
    text (no PBS here), Slurm from `squeue --start` lines as it prints them."""
    import subprocess
    from datetime import datetime

    from crossfl.schedulers.pbs import PbsPro
    from crossfl.schedulers.slurm import Slurm
    from crossfl.server.site_executors import PILOT_NAMES

    ours = PILOT_NAMES[False]
    pbs, slurm = PbsPro(), Slurm()
    qstat = (
        "CROSSFL_USER=ada\n"
        "Job Id: 101.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n"
        f"    Job_Name = {ours}0.1765100000.1\n"
        "    Job_Owner = ada@polaris-login-02.hsn.cm.polaris.alcf.anl.gov\n"
        "    job_state = Q\n"
        "    estimated.start_time = Tue Dec  8 03:10:00 2026\n"
        "\n"
        "Job Id: 102.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n"
        "    Job_Name = parsl.GlobusComputeEngine-HighThroughputExecutor.block-1.17651\n"
        "\t00200.2\n"
        "    Job_Owner = ada@polaris-login-01.hsn.cm.polaris.alcf.anl.gov\n"
        "    job_state = Q\n"
        "    estimated.start_time = Mon Dec  7 22:45:00 2026\n"
        "\n"
        "Job Id: 103.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n"
        f"    Job_Name = {ours}2.1765100300.3\n"
        "    Job_Owner = ada@polaris-login-01.hsn.cm.polaris.alcf.anl.gov\n"
        "    job_state = Q\n"
        "    comment = Not Running: Insufficient amount of resource: ncpus\n"
        "\n"
        "Job Id: 104.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n"
        f"    Job_Name = {ours}0.1765000000.1\n"
        "    Job_Owner = bob@polaris-login-01.hsn.cm.polaris.alcf.anl.gov\n"
        "    job_state = Q\n"
        "    estimated.start_time = Mon Dec  7 19:00:00 2026\n"
        "\n"
        "Job Id: 105.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n"
        "    Job_Name = crossfl-build\n"
        "    Job_Owner = ada@polaris-login-01.hsn.cm.polaris.alcf.anl.gov\n"
        "    job_state = Q\n"
        "    estimated.start_time = Mon Dec  7 19:30:00 2026\n"
    )
    starts = pbs.parse_queued_starts(qstat, 0, ours)
    assert sorted(starts) == [datetime(2026, 12, 7, 22, 45), datetime(2026, 12, 8, 3, 10)]
    assert pbs.parse_queued_starts(qstat, 0, PILOT_NAMES[True]) == []
    assert pbs.parse_queued_starts(qstat.replace("CROSSFL_USER=ada\n", ""), 0, ours) == []
    squeue = (
        "CROSSFL_USER=ada\n"
        f"ada 2026-12-08T03:10:00 {ours}0.1765100000.1\n"
        f"ada 2026-12-07T22:45:00 {ours}1.1765100200.2\n"
        f"ada N/A {ours}2.1765100300.3\n"
        f"bob 2026-12-07T19:00:00 {ours}0.1765000000.1\n"
        "ada 2026-12-07T19:30:00 crossfl-build\n"
    )
    starts = slurm.parse_queued_starts(squeue, 0, ours)
    assert sorted(starts) == [datetime(2026, 12, 7, 22, 45), datetime(2026, 12, 8, 3, 10)]
    assert slurm.parse_queued_starts(squeue, 1, ours) == []
    for line in (pbs.queued_starts_command(), slurm.queued_starts_command()):
        assert line is not None and line.startswith('u="${USER:-$(id -un)}"; echo "CROSSFL_USER')
        assert subprocess.run(["bash", "-n", "-c", line], check=False).returncode == 0
