"""PBS Pro: qsub/qstat/qdel, `#PBS`, Parsl's PBSProProvider; PALS mpiexec does not bind GPUs,
so ranks pick theirs from PMI_LOCAL_RANK; jobs name the filesystems they use.

What `crossfl doctor` asks PBS: `qstat --version`, `qstat -B` (the server answers);
`qstat -Qf NAME` for a queue's limits: ALCF documents it ("Please use the following command
to view details of a queue: `qstat -Qf <queuename>`", docs.alcf.anl.gov/polaris/running-jobs/
#queues) and which attributes hold them ("the min and max node count
(resources_[min|max].nodect) and min and max walltime", docs.alcf.anl.gov/running-jobs/
#queues); `qstat -x -f ID` for one job, finished ones included (`-x`, ALCF keeps two weeks of
history), `job_state` F and `Exit_status` once it ended. The text is qstat's `-f` layout
(openpbs src/cmds/qstat.c, prt_attr: "Queue: NAME" / "Job Id: ID", then
"    name.resource = value" lines, long values continued on lines starting with a tab).
PBS itself lists no user's accounts; ALCF's allocation tool is sbank
(`sbank-list-allocations -p PROJECT -r all`, docs.alcf.anl.gov/account-project-management/
allocation-management/allocation-management/), used where it is installed.
"""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import ClassVar

from crossfl.schedulers import register
from crossfl.schedulers.base import (
    AccountCheck,
    Fields,
    JobStatus,
    QueueLimits,
    Scheduler,
    marker_user,
    yaml_value,
)
from crossfl.schedulers.spec import BatchJob, JobSpec

SBANK = "sbank-list-allocations"
NO_SBANK = "CROSSFL_NO_SBANK"
# job_state letters (PBS Reference Guide, "Job States") of a job that has ended.
ENDED_STATES = frozenset({"F", "X", "M"})


def parse_full(text: str) -> dict[str, dict[str, str]]:
    """`qstat -f` / `-Qf` / `-Bf` text -> {object name: {attribute: value}}."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] not in " \t" and ": " in line:  # "Queue: debug", "Job Id: 12.server"
            current = out.setdefault(line.split(": ", 1)[1].strip(), {})
            continue
        if current is None:
            continue
        if line.startswith("\t") and last:  # continuation of a long value
            current[last] += line.strip()
        elif " = " in line:
            key, _, value = line.strip().partition(" = ")
            current[key] = value.strip()
            last = key
    return out


def parse_pbs_time(text: str) -> int | None:
    """Seconds of a PBS duration: [[HH:]MM:]SS, or plain seconds."""
    parts = text.strip().split(":")
    if not text.strip() or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return seconds


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _columns(lines: list[str]) -> list[dict[str, str]]:
    """Rows of a fixed-width table whose header is underlined with dashes (sbank)."""
    for i in range(1, len(lines)):
        if set(lines[i].strip()) <= {"-", " "} and "-" in lines[i]:
            spans, start = [], None
            for j, ch in enumerate(lines[i] + " "):
                if ch == "-" and start is None:
                    start = j
                elif ch != "-" and start is not None:
                    spans.append((start, j))
                    start = None
            # a column runs from its dashes to the start of the next one (values overhang)
            cuts = [
                (a, spans[k + 1][0] if k + 1 < len(spans) else None)
                for k, (a, _) in enumerate(spans)
            ]
            names = [lines[i - 1][a:b].strip() for a, b in cuts]
            rows = []
            for line in lines[i + 1 :]:
                if not line.strip():
                    break
                rows.append({n: line[a:b].strip() for n, (a, b) in zip(names, cuts, strict=True)})
            return rows
    return []


def _estimated_start(attrs: dict[str, str]) -> datetime | None:
    value = " ".join(attrs.get("estimated.start_time", "").split())
    try:
        return datetime.strptime(value, "%a %b %d %H:%M:%S %Y") if value else None
    except ValueError:
        return None


@register
class PbsPro(Scheduler):
    name = "pbs"
    title = "PBS Pro"
    provider = "PBSProProvider"
    directive_prefix = "#PBS"
    options = frozenset(
        {
            "-A",
            "-N",
            "-q",
            "-l",
            "-k",
            "-j",
            "-o",
            "-e",
            "-m",
            "-M",
            "-W",
            "-V",
            "-v",
            "-r",
            "-p",
            "-a",
            "-c",
            "-S",
            "-J",
            "-P",
            "-h",
            "-u",
        }
    )
    option_examples = "e.g. -l, -k, -q"
    # Resources a `-l` directive may request.
    resources: ClassVar[frozenset[str]] = frozenset(
        {
            "select",
            "walltime",
            "filesystems",
            "place",
            "singularity_fakeroot",
            "ncpus",
            "ngpus",
            "mem",
            "nodes",
            "debug",
            "daos",
            "mpiprocs",
            "ompthreads",
            "system",
            "host",
        }
    )
    named_flags = {"account": "-A", "queue": "-q"}
    account_word = "project"
    queue_required = True
    submit = "qsub"
    query = 'qstat -u "$USER" 2>&1'
    cancel = "qdel"
    local_rank_env = "PMI_LOCAL_RANK"
    launchers = ("mpiexec", "single")
    binds_gpus = False
    filesystems_request = True
    job_start = ('cd "${PBS_O_WORKDIR:-.}"',)

    # -- asking PBS --------------------------------------------------------------------------

    def status_command(self) -> str | None:
        return "qstat --version 2>&1; qstat -B 2>&1"

    def parse_status(self, text: str, rc: int) -> str | None:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        version = next((ln.split("=", 1)[1].strip() for ln in lines if "pbs_version" in ln), "")
        rows = [ln.split() for ln in lines if not ln.startswith(("Server", "-", "pbs_version"))]
        server = next((r for r in rows if len(r) >= 10 and r[1].isdigit()), None)
        if rc != 0 or server is None:
            return None
        head = f"PBS {version}; " if version else ""
        return f"{head}server {server[0]} {server[-1]}, {server[2]} jobs"

    def account_command(self, account: str | None) -> str | None:
        if not account:
            return None
        return (
            f"if command -v {SBANK} >/dev/null 2>&1; then {SBANK} -p {shlex.quote(account)} "
            f"-r all 2>&1; else echo {NO_SBANK}; fi"
        )

    def parse_account(self, account: str | None, text: str, rc: int) -> AccountCheck:
        if not account:
            return AccountCheck(None, "the site sets no project (account); PBS lists none")
        if NO_SBANK in text:
            return AccountCheck(
                None,
                f"PBS has no command listing your projects, and ALCF's "
                f"{SBANK} is not here: {account} not checked",
            )
        lines = text.splitlines()
        rows = [r for r in _columns(lines) if r.get("Project") == account]
        if rc != 0 and not rows:
            return AccountCheck(None, f"{SBANK} failed: {_last_line(text) or rc}")
        if not rows:
            return AccountCheck(False, f"{SBANK} lists no allocation of project {account}")
        balance = [
            f"{r.get('Resource', '?')} {r.get('Available Balance') or r.get('Quota', '?')}"
            for r in rows
        ]
        return AccountCheck(
            True, f"{SBANK}: {account} has {', '.join(balance)} (node hours available)"
        )

    def limits_command(self, name: str, by: str = "queue") -> str | None:
        return f"qstat -Qf {shlex.quote(name)} 2>&1"

    def parse_limits(self, name: str, text: str, rc: int, by: str = "queue") -> QueueLimits:
        queues = parse_full(text)
        attrs = queues.get(name)
        if attrs is None:
            if "Unknown queue" in text:
                return QueueLimits(name, found=False, shown=f"qstat: unknown queue {name}")
            return QueueLimits(name, found=None, shown=_last_line(text) or f"exit status {rc}")
        keys = ("resources_max.walltime", "resources_max.nodect", "resources_min.nodect")
        shown = " ".join(f"{k.replace('resources_', '')}={attrs.get(k, '-')}" for k in keys)
        if attrs.get("queue_type", "").lower().startswith("route"):
            routes = ", ".join(attrs.get("route_destinations", "?").split(","))
            shown += f" (routes to {routes})"
        return QueueLimits(
            name,
            found=True,
            max_walltime=parse_pbs_time(attrs.get("resources_max.walltime", "")),
            max_nodes=_int(attrs.get("resources_max.nodect")),
            min_nodes=_int(attrs.get("resources_min.nodect")),
            shown=shown,
        )

    def submit_command(self, script: str) -> str | None:
        return f"qsub {script} 2>&1"

    def parse_job_id(self, text: str) -> str | None:
        line = _last_line(text)
        return line if line.split(".", 1)[0].rstrip("[]").isdigit() else None

    def job_command(self, job_id: str) -> str | None:
        return f"qstat -x -f {shlex.quote(job_id)} 2>&1"

    def parse_job(self, job_id: str, text: str, rc: int) -> JobStatus:
        jobs = parse_full(text)
        attrs = jobs.get(job_id) or next(
            (a for j, a in jobs.items() if j.split(".")[0] == job_id.split(".")[0]), None
        )
        if attrs is None or "job_state" not in attrs:
            return JobStatus(
                "UNKNOWN",
                done=True,
                ok=None,
                detail=f"qstat does not know job {job_id}: {_last_line(text)}",
            )
        state = attrs["job_state"]
        comment = attrs.get("comment", "")
        if state not in ENDED_STATES:
            return JobStatus(state, done=False, detail=comment)
        code = attrs.get("Exit_status")
        detail = f"Exit_status={code}" + (f"; {comment}" if comment else "")
        return JobStatus(state, done=True, ok=code == "0", detail=detail)

    def job_output(self, job_name: str, job_id: str) -> str | None:
        # qsub's default output name, NAME.oSEQ (stderr joined by the header's -j oe)
        return f"{job_name}.o{job_id.split('.', 1)[0]}"

    # PBS Pro has no test submission: the scheduler's estimate is an attribute of a queued
    # job, `estimated.start_time` in `qstat -f`, set when the scheduler calendars it (top jobs
    # under backfilling), in ctime form, e.g. `Fri Oct  4 15:30:00 2024` (OpenPBS's own tests
    # read it with "%a %b %d %H:%M:%S %Y": openpbs/openpbs
    # test/tests/functional/pbs_calendaring.py, checked 2026-12-07).
    def pending_start_command(self, job_id: str) -> str | None:
        return f"qstat -f {shlex.quote(job_id)} 2>&1"

    def parse_start(self, text: str, rc: int) -> datetime | None:
        for attrs in parse_full(text).values():
            if attrs.get("estimated.start_time"):
                return _estimated_start(attrs)
        return None

    # The user's queued jobs: `qselect -u USER -s Q` lists their IDs, `qstat -f` each one's
    # attributes (Job_Owner USER@HOST, Job_Name, job_state, estimated.start_time). A search
    # of the stored ALCF user guides (argonne-lcf/user-guides, 2026-12-07) found no page on
    # estimated.start_time or qselect: both are OpenPBS's (above; qselect(1)), uncited by a
    # facility. Parsed from recorded text only: no real PBS here.
    def queued_starts_command(self) -> str | None:
        return (
            'u="${USER:-$(id -un)}"; echo "CROSSFL_USER=$u"; '
            'qselect -u "$u" -s Q 2>/dev/null | xargs -r qstat -f 2>&1'
        )

    def parse_queued_starts(self, text: str, rc: int, name_prefix: str) -> list[datetime]:
        user = marker_user(text)
        out = []
        for attrs in parse_full(text).values():
            mine = attrs.get("Job_Owner", "").partition("@")[0] == user
            name = attrs.get("Job_Name", "")
            if user is None or not mine or attrs.get("job_state") != "Q":
                continue
            start = _estimated_start(attrs) if name.startswith(name_prefix) else None
            if start is not None:
                out.append(start)
        return out

    def directive_problem(self, directive: str) -> str | None:
        problem = super().directive_problem(directive)
        words = directive.split()
        if problem or words[0] != "-l":
            return problem
        if len(words) < 2:
            return "-l needs a resource, e.g. -l place=scatter"
        for part in words[1].split(","):
            res = part.split("=", 1)[0].split(":", 1)[0]
            if res not in self.resources:
                return f"PBS resource {res!r} is unknown: one of {sorted(self.resources)}"
        return None

    def directive_filesystems(self, directive: str) -> list[str]:
        words = directive.split()
        if words[0] != "-l" or len(words) < 2:
            return []
        return [
            f
            for part in words[1].split(",")
            if part.partition("=")[0] == "filesystems"
            for f in part.partition("=")[2].split(":")
        ]

    def directive_walltime(self, directive: str) -> str | None:
        words = directive.split()
        if words[0] != "-l" or len(words) < 2:
            return None
        for part in words[1].split(","):
            res, _, value = part.partition("=")
            if res == "walltime":
                return value
        return None

    def resource_directives(self, spec: JobSpec) -> list[str]:
        return [f"-l filesystems={':'.join(spec.filesystems)}"] if spec.filesystems else []

    def select(self, spec: JobSpec, nodes: int) -> str:
        sel = f"select={nodes}"
        if spec.select_options:
            sel += ":" + spec.select_options.lstrip(":")
        return sel

    def header(self, spec: JobSpec, job: BatchJob) -> list[str]:
        p = self.directive_prefix
        lines = [
            "#!/bin/bash -l",
            f"{p} -N {job.name}",
            f"{p} -l {self.select(spec, job.nodes)}",
            f"{p} -l walltime={job.walltime}",
            f"{p} -j oe",
        ]
        lines += [f"{p} {d}" for d in job.directives]
        return lines + self.account_hint(spec, job)

    def provider_fields(self, spec: JobSpec, var: dict[str, str]) -> Fields:
        fields: Fields = [("queue", var["queue"]), ("account", var["account"])]
        if spec.cpus_per_node:
            fields.append(("cpus_per_node", str(spec.cpus_per_node)))
        if spec.select_options:
            fields.append(("select_options", yaml_value(spec.select_options)))
        return fields + self.block_fields(spec, var)
