"""What the kit asks of a batch scheduler, in one small typed interface (as Parsl keeps one
provider class per scheduler): the directives a job script carries, which options they may
use, how they write a walltime, the Parsl provider and the fields its YAML takes, the job
header, the submit/query/cancel commands, the local-rank variable and how GPUs are bound.

It works from values the site builds (crossfl.schedulers.spec: `JobSpec`, `BatchJob`), never
from a site file: the catalog's rules, the renderer and deploy ask the site's scheduler
(`Site.sched`), and none of them compares scheduler names. `crossfl doctor` and the on-site
image build ask it too: the command that shows a queue's limits, the user's accounts, one
job's state, and how to read their answers (the commands run on the login node; the parsers
read what they print).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from crossfl.schedulers.spec import BatchJob, JobSpec

# The kit's walltime (site files, user options, Parsl providers): HH:MM:SS.
WALLTIME_JSON_PATTERN = r"^\d{1,3}:[0-5]\d:[0-5]\d$"
_WALLTIME = re.compile(r"^(\d{1,3}):([0-5]\d):([0-5]\d)$")


def parse_walltime(text: str) -> int:
    """'HH:MM:SS' -> seconds; ValueError with the accepted form otherwise."""
    m = _WALLTIME.match(text.strip())
    if not m:
        raise ValueError(f"walltime {text!r} is not HH:MM:SS: write it like 01:00:00")
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


def marker_user(text: str) -> str | None:
    """The login user a query printed first (``CROSSFL_USER=NAME``)."""
    line = next((ln for ln in text.splitlines() if ln.startswith("CROSSFL_USER=")), "")
    return line.partition("=")[2].strip() or None


def yaml_value(value: object) -> str:
    """A YAML-safe scalar (JSON is YAML), for a provider or launcher field."""
    return json.dumps(value)


Fields = list[tuple[str, str]]
"""(key, YAML value) pairs, in order, placed as they are under `provider:` or `launcher:`."""


@dataclass(frozen=True)
class QueueLimits:
    """One queue (partition, QOS) as the scheduler itself reports it; None: no limit set."""

    name: str
    found: bool | None  # None: the scheduler could not tell (an error, not a no)
    max_walltime: int | None = None  # seconds
    max_nodes: int | None = None
    min_nodes: int | None = None
    shown: str = ""  # what it said, in its own words (e.g. "MaxTime=02:00:00 MaxNodes=64")


@dataclass(frozen=True)
class AccountCheck:
    """Whether the scheduler's accounting knows the account; valid None: it cannot tell."""

    valid: bool | None
    detail: str


@dataclass(frozen=True)
class JobStatus:
    """One job as the scheduler's query shows it."""

    state: str  # the scheduler's own word: PENDING, RUNNING, COMPLETED; Q, R, F
    done: bool
    ok: bool | None = None  # once done: finished with exit status 0 (None: unknown)
    detail: str = ""  # exit code, reason


class Scheduler:
    """One scheduler's facts. Subclass it in a module of this package and decorate the class
    with `crossfl.schedulers.register`; that is all a new scheduler takes."""

    name: ClassVar[str]  # the site files' `scheduler:` value
    title: ClassVar[str]  # for messages, e.g. "PBS Pro"
    batch: ClassVar[bool] = True  # pilot jobs and batch scripts (False: runs here, no jobs)
    provider: ClassVar[str]  # Parsl provider class the endpoint builds
    directive_prefix: ClassVar[str | None] = None  # "#SBATCH"
    options: ClassVar[frozenset[str]] = frozenset()  # options a directive may use
    option_examples: ClassVar[str] = ""  # a few of them, for the message about a typo
    # JobSpec fields written as named directives in batch scripts, with their option, in order.
    named_flags: ClassVar[dict[str, str]] = {}
    account_word: ClassVar[str] = "account"  # what the facility calls it, for the hint
    queue_word: ClassVar[str] = "queue"  # "partition" on Slurm
    queue_required: ClassVar[bool] = False  # a job must name a queue
    submit: ClassVar[str | None] = None  # sbatch
    query: ClassVar[str | None] = None  # shell line listing the user's jobs
    cancel: ClassVar[str | None] = None  # scancel
    local_rank_env: ClassVar[str | None] = None  # a rank's index on its node, in batch jobs
    launchers: ClassVar[tuple[str, ...]] = ("single",)  # launcher types it runs
    binds_gpus: ClassVar[bool] = True  # `accelerator.bind: scheduler` works here
    shares_nodes: ClassVar[bool] = False  # a job may ask for part of a node
    filesystems_request: ClassVar[bool] = False  # jobs declare the filesystems they use
    job_start: ClassVar[tuple[str, ...]] = ()  # shell lines right after `set -euo pipefail`

    @property
    def has_qos(self) -> bool:
        return "qos" in self.named_flags

    # -- what a site file may ask of it (checked by crossfl.sites.catalog_rules) --------------

    @property
    def where(self) -> str:
        """Where its jobs run, for messages: "under Slurm", "on a local site"."""
        return f"under {self.title}" if self.batch else "on a local site"

    def directive_problem(self, directive: str) -> str | None:
        """Why a directive (written without its prefix, e.g. "-q debug") would be refused."""
        if not self.batch:
            return "a local site has no scheduler directives"
        words = directive.split()
        if not words:
            return "empty directive"
        opt = words[0].split("=", 1)[0]
        if opt not in self.options:
            return (
                f"{self.submit} has no option {opt!r}: check `man {self.submit}` "
                f"({self.option_examples})"
            )
        return None

    def directive_walltime(self, directive: str) -> str | None:
        """The walltime a directive asks for, as written, or None."""
        return None

    def parse_time(self, text: str) -> int:
        """Seconds of a walltime as this scheduler's directives write it."""
        return parse_walltime(text)

    def directive_filesystems(self, directive: str) -> list[str]:
        """The filesystems a directive requests (PBS `-l filesystems=a:b`)."""
        return []

    # -- batch scripts ---------------------------------------------------------------------

    def directives(self, spec: JobSpec, *, for_pilot: bool) -> list[str]:
        """Directives (without prefix) the facility needs. For the pilot job Parsl already
        writes nodes/walltime and the provider's own fields; batch scripts get everything."""
        d: list[str] = []
        if not for_pilot:
            d += [
                f"{flag} {getattr(spec, field)}"
                for field, flag in self.named_flags.items()
                if getattr(spec, field)
            ]
        d += self.resource_directives(spec)
        return d + list(spec.directives)

    def resource_directives(self, spec: JobSpec) -> list[str]:
        """Directives that follow from what a job holds (GPUs, filesystems)."""
        return []

    def header(self, spec: JobSpec, job: BatchJob) -> list[str]:
        """The first lines of a batch script: interpreter and directives."""
        raise NotImplementedError(f"{self.title} runs no batch scripts")

    def account_hint(self, spec: JobSpec, job: BatchJob) -> list[str]:
        if not job.account_hint or spec.account:
            return []
        flag = self.named_flags.get("account", "-A")
        return [
            f"# No account in the catalog or your overrides: submit with `{self.submit} "
            f"{flag} <{self.account_word}>`, or set `account` in",
            f"# deploy/sites/overrides/{spec.site}.yaml (or the site's ${{VAR}}) and render again.",
        ]

    # -- asking the scheduler on the login node (crossfl doctor, on-site builds) -------------
    # Each `*_command` is a shell line for the login node (None: this scheduler has none);
    # each `parse_*` reads what that line printed (stdout and stderr together) and its status.

    def status_command(self) -> str | None:
        """A line that shows the scheduler answers (its version and queues)."""
        return None

    def parse_status(self, text: str, rc: int) -> str | None:
        """A one-line summary of the answer, or None when the scheduler did not answer."""
        return None

    def account_command(self, account: str | None) -> str | None:
        """A line listing what the scheduler's accounting knows of the user's accounts."""
        return None

    def parse_account(self, account: str | None, text: str, rc: int) -> AccountCheck:
        return AccountCheck(None, f"{self.title} has no command here to list accounts")

    def limits_command(self, name: str, by: str = "queue") -> str | None:
        """A line showing one queue's limits (`by`: "queue" or "qos", as limits_by)."""
        return None

    def parse_limits(self, name: str, text: str, rc: int, by: str = "queue") -> QueueLimits:
        return QueueLimits(name, found=False, shown=f"{self.title}: no limits command")

    def submit_command(self, script: str) -> str | None:
        """A line submitting `script` (a shell word) that prints the job id."""
        return None

    def parse_job_id(self, text: str) -> str | None:
        """The job id a submission printed, or None when it printed none."""
        return None

    def job_command(self, job_id: str) -> str | None:
        """A line showing one job's state, while queued and after it ended."""
        return None

    def parse_job(self, job_id: str, text: str, rc: int) -> JobStatus:
        return JobStatus("UNKNOWN", done=True, ok=None, detail=text.strip()[:200])

    def job_output(self, job_name: str, job_id: str) -> str | None:
        """The name of the output file a job of our batch headers writes in its submit
        directory."""
        return None

    # -- when a pilot would start (crossfl.server.dispatch: the policy's start estimates) -----

    def start_test_command(
        self, *, nodes: int, walltime_s: int, queue: str | None, account: str | None
    ) -> str | None:
        """A line asking when a job of this shape would start if submitted now, without
        submitting it (None: this scheduler cannot; ask about a queued job instead)."""
        return None

    def pending_start_command(self, job_id: str) -> str | None:
        """A line asking when a queued job is expected to start."""
        return None

    def parse_start(self, text: str, rc: int) -> datetime | None:
        """The start time (local, naive) a start query printed; None when it gave none."""
        return None

    def queued_starts_command(self) -> str | None:
        """A line printing ``CROSSFL_USER=<login user>``, then the scheduler's start
        estimates of that user's queued jobs (None: this scheduler has no such query)."""
        return None

    def parse_queued_starts(self, text: str, rc: int, name_prefix: str) -> list[datetime]:
        """The estimated starts (naive, in the query's time zone) of the user's queued jobs
        whose name begins with ``name_prefix``; other users' jobs and jobs without an
        estimate are left out."""
        return []

    # -- the endpoint ----------------------------------------------------------------------

    def provider_fields(self, spec: JobSpec, var: dict[str, str]) -> Fields:
        """The Parsl provider's fields under `provider:` (after `type`). `var` holds the
        endpoint's template expression for each user option (account, queue, ...)."""
        return self.block_fields(spec, var)

    def block_fields(self, spec: JobSpec, var: dict[str, str]) -> Fields:
        return [
            ("walltime", var["walltime"]),
            ("nodes_per_block", var["nodes_per_block"]),
            ("init_blocks", str(spec.init_blocks)),
            ("min_blocks", str(spec.min_blocks)),
            ("max_blocks", var["max_blocks"]),
        ]
