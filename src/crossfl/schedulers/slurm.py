"""Slurm: sbatch/squeue/scancel, `#SBATCH`, Parsl's SlurmProvider; srun binds GPUs.

What `crossfl doctor` asks Slurm (Slurm's own man pages: sinfo(1), scontrol(1), sacctmgr(1)):
`sinfo -V` and `sinfo -h -o '%P %a %D %T'`; `sacctmgr -n -P show assoc user=... format=account`
for the user's accounts; `scontrol show partition -o NAME` (MaxTime, MaxNodes, MinNodes) or
`sacctmgr -n -P show qos NAME format=...` (MaxWall, MaxTRES node=, MinTRES node=) for a
queue's limits; `scontrol show job -o ID`, then `sacct` once the job left slurmctld's
memory, for one job. Where accounting is off (no slurmdbd), sacctmgr and sacct say so.

When a pilot would start (the dispatch policy's start estimate): `sbatch --test-only` with the
pilot's shape, which "return[s] an estimate of when a job would be scheduled to run given the
current job queue ... No job is actually submitted" and prints `sbatch: Job N to start at
YYYY-MM-DDTHH:MM:SS using ...`; for a job already queued, `squeue --start -h -j ID -o %S`
(its expected start, or N/A). https://slurm.schedmd.com/sbatch.html (--test-only),
https://slurm.schedmd.com/squeue.html (--start, %S), checked 2026-12-07.
"""

from __future__ import annotations

import re
import shlex
from datetime import datetime

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

# Job states of squeue(1)/scontrol(1) in which a job has not ended yet.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
        "PREEMPTED_REQUEUE",
    }
)
_USER = '"${USER:-$(id -un)}"'
_QOS_FORMAT = "Name,MaxWall,MaxTRES,MinTRES,MaxJobsPU,MaxSubmitPU"
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_START = re.compile(r"(?:to start at|^)\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", re.M)


def parse_slurm_time(text: str) -> int:
    """Seconds of a Slurm --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(f"time {text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if b is None:
        return int(a) * 60
    if c is None:
        return int(a) * 60 + int(b)
    return int(a) * 3600 + int(b) * 60 + int(c)


def _words(text: str) -> dict[str, str]:
    """KEY=value words of a one-line scontrol record."""
    out: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in out:
            out[key] = value
    return out


def _limit_time(text: str) -> int | None:
    return None if text in ("", "UNLIMITED", "INFINITE", "NONE") else parse_slurm_time(text)


def _limit_int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _tres_nodes(tres: str) -> int | None:
    """node=N of a TRES list such as `cpu=64,gres/gpu=4,node=8`."""
    for part in tres.split(","):
        key, _, value = part.partition("=")
        if key == "node" and value.isdigit():
            return int(value)
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _said(text: str, limit: int = 160) -> str:
    """What a command printed, on one line."""
    return " ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())[:limit]


@register
class Slurm(Scheduler):
    name = "slurm"
    title = "Slurm"
    provider = "SlurmProvider"
    directive_prefix = "#SBATCH"
    # sbatch options a directive may use; anything else is refused at load time (a typo in a
    # directive otherwise surfaces only as a rejected job at the facility).
    options = frozenset(
        {
            "-A",
            "--account",
            "-p",
            "--partition",
            "-q",
            "--qos",
            "-t",
            "--time",
            "-N",
            "--nodes",
            "-n",
            "--ntasks",
            "--ntasks-per-node",
            "-c",
            "--cpus-per-task",
            "-C",
            "--constraint",
            "-G",
            "--gpus",
            "--gpus-per-node",
            "--gpus-per-task",
            "--gpu-bind",
            "--gres",
            "--gres-flags",
            "--exclusive",
            "--mem",
            "--mem-per-cpu",
            "--mem-per-gpu",
            "-J",
            "--job-name",
            "-o",
            "--output",
            "-e",
            "--error",
            "--network",
            "-S",
            "--core-spec",
            "--threads-per-core",
            "--hint",
            "--signal",
            "--mail-type",
            "--mail-user",
            "--licenses",
            "-L",
            "--reservation",
            "--exclude",
            "-x",
            "--nodelist",
            "-w",
            "--requeue",
            "--no-requeue",
            "--switches",
            "--time-min",
            "--cpu-freq",
            "--comment",
            "--export",
            "--get-user-env",
            "--image",
            "--module",
            "--volume",  # Shifter (NERSC) adds these to sbatch
        }
    )
    option_examples = "e.g. --qos, --constraint"
    named_flags = {"account": "-A", "queue": "-p", "qos": "-q", "constraint": "-C"}
    queue_word = "partition"
    submit = "sbatch"
    query = "squeue --me -h -o '%i %j %T %M %D' 2>&1 || squeue -u \"$USER\" -h 2>&1"
    cancel = "scancel"
    local_rank_env = "SLURM_LOCALID"
    launchers = ("srun", "mpiexec", "single")
    shares_nodes = True  # e.g. Perlmutter's shared QOS: part of a node, --exclusive off

    # -- asking Slurm ------------------------------------------------------------------------

    def status_command(self) -> str | None:
        return "sinfo -V 2>&1 && sinfo -h -o '%P %a %D %T' 2>&1"

    def parse_status(self, text: str, rc: int) -> str | None:
        lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
        if rc != 0 or not lines or not lines[0][0].startswith("slurm"):  # "slurm 25.11.4"
            return None
        version = " ".join(lines[0])
        parts: dict[str, list[str]] = {}
        for words in lines[1:]:
            if len(words) == 4:
                parts.setdefault(f"{words[0]} ({words[1]})", []).append(f"{words[2]} {words[3]}")
        shown = "; ".join(f"{p}: {', '.join(v)}" for p, v in parts.items())
        return f"{version}; partitions {shown or 'none listed'}"

    def account_command(self, account: str | None) -> str | None:
        return f"sacctmgr -n -P show assoc user={_USER} format=account 2>&1"

    def parse_account(self, account: str | None, text: str, rc: int) -> AccountCheck:
        if rc != 0:
            return AccountCheck(
                None,
                f"sacctmgr cannot tell (no accounting here?): {_said(text) or f'exit status {rc}'}",
            )
        mine = sorted({ln.strip() for ln in text.splitlines() if ln.strip()})
        if not mine:
            return AccountCheck(None, "sacctmgr lists no account for you")
        if account is None:
            return AccountCheck(None, f"the site sets no account; yours: {', '.join(mine)}")
        if account in mine:
            others = [a for a in mine if a != account]
            also = f" (also {', '.join(others)})" if others else ""
            return AccountCheck(True, f"sacctmgr: you may charge {account}{also}")
        return AccountCheck(
            False, f"{account} is not one of your accounts ({', '.join(mine)}) per sacctmgr"
        )

    def limits_command(self, name: str, by: str = "queue") -> str | None:
        if by == "qos":
            return f"sacctmgr -n -P show qos {shlex.quote(name)} format={_QOS_FORMAT} 2>&1"
        return f"scontrol show partition -o {shlex.quote(name)} 2>&1"

    def parse_limits(self, name: str, text: str, rc: int, by: str = "queue") -> QueueLimits:
        if by == "qos":
            return self._parse_qos(name, text, rc)
        if "not found" in text:
            return QueueLimits(name, found=False, shown=f"scontrol: partition {name} not found")
        w = _words(text)
        if rc != 0 or "PartitionName" not in w:
            return QueueLimits(name, found=None, shown=_last_line(text) or f"exit status {rc}")
        shown = " ".join(f"{k}={w.get(k, '?')}" for k in ("MaxTime", "MaxNodes", "MinNodes"))
        min_nodes = _limit_int(w.get("MinNodes", ""))
        return QueueLimits(
            name,
            found=True,
            max_walltime=_limit_time(w.get("MaxTime", "")),
            max_nodes=_limit_int(w.get("MaxNodes", "")),
            min_nodes=min_nodes if min_nodes else None,
            shown=shown,
        )

    def _parse_qos(self, name: str, text: str, rc: int) -> QueueLimits:
        if rc != 0:
            return QueueLimits(name, found=None, shown=f"sacctmgr cannot tell: {_said(text) or rc}")
        rows = [ln.split("|") for ln in text.strip().splitlines() if "|" in ln]
        row = next((r for r in rows if r[0] == name), None)
        if row is None or len(row) < 4:
            return QueueLimits(name, found=False, shown=f"sacctmgr: no QOS {name}")
        fields = dict(zip(_QOS_FORMAT.split(","), row, strict=False))
        shown = " ".join(f"{k}={fields.get(k) or '-'}" for k in ("MaxWall", "MaxTRES", "MinTRES"))
        return QueueLimits(
            name,
            found=True,
            max_walltime=_limit_time(fields.get("MaxWall", "")),
            max_nodes=_tres_nodes(fields.get("MaxTRES", "")),
            min_nodes=_tres_nodes(fields.get("MinTRES", "")),
            shown=shown,
        )

    def submit_command(self, script: str) -> str | None:
        return f"sbatch --parsable {script} 2>&1"

    def parse_job_id(self, text: str) -> str | None:
        line = _last_line(text)
        job = line.split(";", 1)[0]
        return job if job.isdigit() else None

    def job_command(self, job_id: str) -> str | None:
        j = shlex.quote(job_id)
        return f"scontrol show job -o {j} 2>&1 || sacct -n -P -X -j {j} -o State,ExitCode 2>&1"

    def parse_job(self, job_id: str, text: str, rc: int) -> JobStatus:
        w = _words(text)
        if "JobState" in w:
            state, code = w["JobState"], w.get("ExitCode", "")
            reason = w.get("Reason", "None")
            detail = f"Reason={reason}" if reason != "None" else ""
            if state not in ACTIVE_STATES:
                detail = f"ExitCode={code}" + (f" {detail}" if detail else "")
        else:
            row = next(
                (
                    ln.strip().split("|")
                    for ln in text.splitlines()
                    if re.fullmatch(r"[A-Z_]+( by \d+)?\|\d+:\d+", ln.strip())
                ),
                None,
            )
            if row is None:
                return JobStatus(
                    "UNKNOWN",
                    done=True,
                    ok=None,
                    detail=f"neither scontrol nor sacct knows job {job_id}: {_last_line(text)}",
                )
            state, code = row[0].split()[0], row[1]
            detail = f"ExitCode={code}"
        if state in ACTIVE_STATES:
            return JobStatus(state, done=False, detail=detail)
        return JobStatus(state, done=True, ok=state == "COMPLETED" and code == "0:0", detail=detail)

    def job_output(self, job_name: str, job_id: str) -> str | None:
        return f"{job_name}-{job_id}.out"  # the header's `-o NAME-%j.out`

    def start_test_command(
        self, *, nodes: int, walltime_s: int, queue: str | None, account: str | None
    ) -> str | None:
        m, sec = divmod(int(walltime_s), 60)
        words = ["sbatch", "--test-only", f"--nodes={int(nodes)}", f"--time={m}:{sec:02d}"]
        if queue:
            words.append(f"--partition={queue}")
        if account:
            words.append(f"--account={account}")
        return " ".join(shlex.quote(w) for w in [*words, "--wrap=true"]) + " 2>&1"

    def pending_start_command(self, job_id: str) -> str | None:
        return f"squeue --start -h -j {shlex.quote(job_id)} -o %S 2>&1"

    def parse_start(self, text: str, rc: int) -> datetime | None:
        m = _START.search(text) if rc == 0 else None
        return datetime.fromisoformat(m.group(1)) if m else None

    def queued_starts_command(self) -> str | None:
        # --start: pending jobs with their expected start (%S, "N/A" when the scheduler has
        # none yet); -o after it sets the columns (squeue(1), checked 2026-12-07)
        return (
            f'u={_USER}; echo "CROSSFL_USER=$u"; '
            "squeue -u \"$u\" -h --start -t PENDING -o '%u %S %j' 2>&1"
        )

    def parse_queued_starts(self, text: str, rc: int, name_prefix: str) -> list[datetime]:
        user = marker_user(text)
        out = []
        for line in text.splitlines():
            words = line.split(None, 2)
            if rc != 0 or user is None or len(words) < 3 or words[0] != user:
                continue
            if words[2].startswith(name_prefix) and _START.fullmatch(words[1]):
                out.append(datetime.fromisoformat(words[1]))
        return out

    def directive_walltime(self, directive: str) -> str | None:
        words = directive.replace("=", " ", 1).split()
        return words[1] if words[0] in ("-t", "--time") and len(words) > 1 else None

    def parse_time(self, text: str) -> int:
        return parse_slurm_time(text)

    def resource_directives(self, spec: JobSpec) -> list[str]:
        if spec.shared_node:  # part of a shared node: its GPUs and CPUs, nothing exclusive
            return [
                f"--gpus-per-node={spec.devices_per_node}",
                f"--cpus-per-task={spec.cpus_per_node}",
            ]
        if spec.devices_per_node:  # every GPU of the node, for the pilot's one task per node
            return [f"--gpus-per-node={spec.devices_per_node}"]
        return []

    def header(self, spec: JobSpec, job: BatchJob) -> list[str]:
        p = self.directive_prefix
        lines = ["#!/bin/bash", f"{p} -J {job.name}", f"{p} -N {job.nodes}"]
        if job.ranks_per_node is not None:
            lines.append(f"{p} --ntasks-per-node={job.ranks_per_node}")
        if job.cpus_per_rank is not None:  # the job holds what its srun line asks for
            lines.append(f"{p} --cpus-per-task={job.cpus_per_rank}")
        lines += [f"{p} -t {job.walltime}", f"{p} -o {job.name}-%j.out"]
        lines += [f"{p} {d}" for d in job.directives]
        return lines + self.account_hint(spec, job)

    def provider_fields(self, spec: JobSpec, var: dict[str, str]) -> Fields:
        fields: Fields = []
        if "queue" in var:
            fields.append(("partition", var["queue"]))
        fields.append(("account", var["account"]))
        if "qos" in var:
            fields.append(("qos", var["qos"]))
        if spec.constraint:
            fields.append(("constraint", yaml_value(spec.constraint)))
        # A pilot that gets part of a node must not ask for the whole node.
        fields.append(("exclusive", "false" if spec.shared_node else "true"))
        return fields + self.block_fields(spec, var)
