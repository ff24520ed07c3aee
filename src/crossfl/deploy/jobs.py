"""Jobs that `crossfl deploy` (an image build) and `crossfl doctor --smoke` start at a site and
wait for, over the same SSH connection:

- a batch job: the site scheduler's submit command, then its own query for that one job
  (`Scheduler.submit_command` / `job_command` / `parse_job`, crossfl.schedulers), polled
  until the job has ended;
- a process on the login node (an image build where the facility allows that there):
  started detached with its output in a file, followed by its pid and an exit-status file.

A dry run prints the commands, with `<job id>` where the scheduler's answer would go.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from crossfl.deploy.remote import Remote
from crossfl.errors import UserError
from crossfl.quoting import quote
from crossfl.schedulers import JobStatus, Scheduler

DRY_JOB_ID = "<job id>"
POLL_FIRST_S = 2.0
POLL_MAX_S = 30.0


@dataclass(frozen=True)
class Job:
    where: Literal["login", "batch"]
    job_id: str
    output: str  # the job's output file on the login node
    host: str | None = None  # the login node a process runs on


def submit(
    remote: Remote, sched: Scheduler, script: str, cwd: str, job_name: str, what: str
) -> Job:
    """Submit `script` (a path on the login node) from `cwd` with the scheduler's submit
    command; the job's output lands in `cwd` (our batch headers name it)."""
    line = sched.submit_command(quote(script))
    if line is None:
        raise UserError(
            f"site {remote.t.site}: {sched.title} cannot submit the {what} job from here",
            fix="run it by hand on the login node",
        )
    res = remote.run(
        f"mkdir -p {quote(cwd)} && cd {quote(cwd)} && {line}",
        label=f"submit the {what} job ({sched.submit} {script})",
    )
    job_id = DRY_JOB_ID if remote.dry_run else sched.parse_job_id(res.stdout + res.stderr)
    if job_id is None or not res.ok:
        raise UserError(
            f"site {remote.t.site}: `{sched.submit}` refused the {what} job on "
            f"{remote.t.label}: {res.tail(2)}",
            fix="check the account, queue and walltime the script asks for "
            f"(`crossfl doctor {remote.t.site}` checks them)",
        )
    output = sched.job_output(job_name, job_id) or f"{job_name}.out"
    remote.say(f"{what} job {job_id} submitted; its output: {cwd}/{output}")
    return Job("batch", job_id, f"{cwd}/{output}")


def start_login(
    remote: Remote, script: str, cwd: str, name: str, what: str, args: tuple[str, ...] = ()
) -> Job:
    """Start `bash script ARGS` on the login node, detached from the SSH session (nohup: the
    session's end does not stop it); its output goes to `cwd/name.log` and its exit status to
    `cwd/name.rc`. `$!` is the process to follow (nohup execs bash in place)."""
    log, rc = f"{cwd}/{name}.log", f"{cwd}/{name}.rc"
    words = "".join(f" {quote(a)}" for a in args)
    inner = f"bash {quote(script)}{words}; echo $? > {quote(rc)}"
    res = remote.run(
        f"mkdir -p {quote(cwd)} && cd {quote(cwd)} && rm -f {quote(rc)} && "
        f"{{ nohup bash -c {shlex.quote(inner)} > {quote(log)} 2>&1 < /dev/null & }} && "
        f"echo CROSSFL_PID=$! && echo CROSSFL_HOST=$(hostname)",
        label=f"start the {what} on the login node (bash {script})",
    )
    m = res.markers()
    if remote.dry_run:
        return Job("login", "<pid>", log, "<login node>")
    if not res.ok or not m.get("PID"):
        raise UserError(
            f"site {remote.t.site}: could not start the {what} on {remote.t.label}: {res.tail(2)}",
            fix="check that the remote root is writable, then deploy again",
        )
    remote.say(f"{what} running on {m.get('HOST')} as process {m['PID']}; its output: {log}")
    return Job("login", m["PID"], log, m.get("HOST"))


def status(remote: Remote, sched: Scheduler, job: Job) -> JobStatus:
    if job.where == "batch":
        line = sched.job_command(job.job_id)
        if line is None:
            return JobStatus("UNKNOWN", done=True, detail=f"{sched.title} cannot be asked")
        res = remote.run(line)
        return sched.parse_job(job.job_id, res.stdout + res.stderr, res.rc)
    rc = job.output.removesuffix(".log") + ".rc"
    pid = job.job_id if job.job_id.isdigit() else "$pid"
    res = remote.run(
        f"if kill -0 {pid} 2>/dev/null; then echo CROSSFL_RUN=1; "
        f"elif [ -f {quote(rc)} ]; then echo CROSSFL_RC=$(cat {quote(rc)}); fi; "
        "echo CROSSFL_HOST=$(hostname)"
    )
    m = res.markers()
    if m.get("RC", "").strip().lstrip("-").isdigit():
        code = int(m["RC"])
        return JobStatus("EXITED", done=True, ok=code == 0, detail=f"exit status {code}")
    if m.get("RUN"):
        return JobStatus("RUNNING", done=False)
    if job.host and m.get("HOST") and m["HOST"] != job.host:
        return JobStatus(
            "ELSEWHERE",
            done=False,
            detail=f"it runs on {job.host}; this connection reached {m['HOST']}",
        )
    return JobStatus("DIED", done=True, ok=False, detail="ended without an exit status")


def wait(
    remote: Remote,
    sched: Scheduler,
    job: Job,
    *,
    timeout_s: float,
    what: str,
    say: Callable[[str], None] | None = None,
) -> JobStatus:
    """Poll the job until it ended or `timeout_s` passed (then its last status, not done)."""
    say = say or remote.say
    if remote.dry_run:
        remote.say(
            f"wait for the {what}: poll, until it ended (at most {timeout_s / 60:.0f} min), with"
        )
        status(remote, sched, job)
        return JobStatus("COMPLETED", done=True, ok=True)
    deadline = time.monotonic() + timeout_s
    delay, last = POLL_FIRST_S, ""
    while True:
        st = status(remote, sched, job)
        shown = f"{st.state} {st.detail}".strip()
        if shown != last:
            say(f"{what} {job.job_id}: {shown}")
            last = shown
        if st.done or time.monotonic() >= deadline:
            return st
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX_S)


def output_tail(remote: Remote, job: Job, lines: int = 5) -> str:
    res = remote.run(f"tail -n {int(lines)} {quote(job.output)} 2>&1")
    return res.tail(lines) if res.stdout.strip() else "(no output)"
