"""What the kit asks of a batch scheduler, in one small typed interface (as Parsl keeps one
provider class per scheduler): the directives a job script carries, which options they may
use, how they write a walltime, the Parsl provider and the fields its YAML takes, the job
header, the submit/query/cancel commands, the local-rank variable and how GPUs are bound.

The site schema, the renderer and deploy ask the site's scheduler (`Site.sched`); none of
them compares scheduler names. `crossfl doctor` and the on-site image build ask it too: the
command that shows a queue's limits, the user's accounts, one job's state, and how to read
their answers (the commands run on the login node; the parsers read what they print).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from crossfl.schema import FieldError

if TYPE_CHECKING:
    from crossfl.sites import Site

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


def _digits_at_most(n: int, width: int) -> str | None:
    """A regex for `width`-digit strings (leading zeros allowed) whose value is <= n."""
    if n < 0:
        return None
    if n >= 10**width - 1:
        return rf"\d{{{width}}}"
    s = str(n).rjust(width, "0")
    alts = []
    for i, ch in enumerate(s):
        rest = width - i - 1
        if int(ch) > 0:
            lower = "0" if ch == "1" else f"[0-{int(ch) - 1}]"
            alts.append(s[:i] + lower + (rf"\d{{{rest}}}" if rest else ""))
    alts.append(s)
    return "(?:" + "|".join(alts) + ")"


def walltime_at_most_pattern(seconds: int) -> str:
    """A regex matching the kit's walltimes (WALLTIME_JSON_PATTERN) of at most `seconds`: what
    JSON Schema, which cannot compare times, can say about a queue's limit."""
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    sec = r"[0-5]\d"
    alts = []
    below = [p for k in (1, 2, 3) if (p := _digits_at_most(min(h - 1, 10**k - 1), k))]
    if below:
        alts.append(f"(?:{'|'.join(below)}):{sec}:{sec}")
    if h <= 999:
        same = "(?:" + "|".join(str(h).rjust(k, "0") for k in range(len(str(h)), 4)) + ")"
        if m > 0:
            alts.append(f"{same}:{_digits_at_most(m - 1, 2)}:{sec}")
        alts.append(f"{same}:{m:02d}:{_digits_at_most(s, 2)}")
    return "^(?:" + "|".join(alts) + ")$"


def yaml_value(value: object) -> str:
    """A YAML-safe scalar (JSON is YAML), for a provider or launcher field."""
    return json.dumps(value)


Fields = list[tuple[str, str]]
"""(key, YAML value) pairs, in order, placed as they are under `provider:` or `launcher:`."""


@dataclass(frozen=True)
class QueueLimits:
    """One queue (partition, QOS) as the scheduler itself reports it; None: no limit set."""

    name: str
    found: bool
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


@dataclass(frozen=True)
class BatchJob:
    """One batch script's header: job name, size, walltime and extra directives."""

    name: str
    nodes: int
    walltime: str
    directives: list[str]
    ranks_per_node: int | None = None
    cpus_per_rank: int | None = None  # what the launcher line gives each rank (srun -c)
    account_hint: bool = False  # say how to pass an account when the site sets none


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
    # Site fields written as named directives in batch scripts, with their option, in order.
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

    # -- the site file ---------------------------------------------------------------------

    def check_site(self, site: Site) -> None:
        """Raise FieldError for what this scheduler cannot do with the site."""
        if site.launcher.type not in self.launchers:
            raise FieldError(
                "launcher.type",
                f"launcher {site.launcher.type!r} does not run "
                f"{self._under}: use launcher.type {' or '.join(self.launchers)}",
            )
        if not self.batch and (site.directives or site.filesystems):
            raise FieldError(
                "directives",
                "a local site has no scheduler directives: remove directives and filesystems",
            )
        if site.accelerator.bind == "scheduler" and not self.binds_gpus:
            raise FieldError(
                "accelerator.bind",
                f"{self.title}'s launcher does not bind GPUs: use bind: local-rank",
            )
        if site.filesystems and not self.filesystems_request:
            raise FieldError(
                "filesystems",
                f"filesystems is a PBS request (-l filesystems=); {self.title} has none: remove it",
            )
        if site.limits_by == "qos" and not self.has_qos:
            raise FieldError("limits_by", f"{self.title} has no QOS: use limits_by: queue")

    @property
    def _under(self) -> str:
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

    def lint_directive(self, site: Site, directive: str) -> list[str]:
        """Problems of one directive of a rendered script, by the site's rules."""
        problem = self.directive_problem(directive)
        if problem:
            return [problem]
        walltime = self.directive_walltime(directive)
        if walltime is None:
            return []
        try:
            seconds = self.parse_time(walltime)
        except ValueError as exc:
            return [str(exc)]
        limit = site.queue_limit()
        if limit and limit.max_walltime and seconds > parse_walltime(limit.max_walltime):
            return [f"walltime {walltime} over the queue maximum {limit.max_walltime}"]
        return []

    def directive_walltime(self, directive: str) -> str | None:
        """The walltime a directive asks for, as written, or None."""
        return None

    def parse_time(self, text: str) -> int:
        """Seconds of a walltime as this scheduler's directives write it."""
        return parse_walltime(text)

    # -- batch scripts ---------------------------------------------------------------------

    def directives(self, site: Site, *, for_pilot: bool) -> list[str]:
        """Directives (without prefix) the facility needs. For the pilot job Parsl already
        writes nodes/walltime and the provider's own fields; batch scripts get everything."""
        d: list[str] = []
        if not for_pilot:
            d += [
                f"{flag} {getattr(site, field)}"
                for field, flag in self.named_flags.items()
                if getattr(site, field)
            ]
        d += self.resource_directives(site)
        return d + list(site.directives)

    def resource_directives(self, site: Site) -> list[str]:
        """Directives that follow from the site's resources (GPUs, filesystems)."""
        return []

    def header(self, site: Site, job: BatchJob) -> list[str]:
        """The first lines of a batch script: interpreter and directives."""
        raise NotImplementedError(f"{self.title} runs no batch scripts")

    def account_hint(self, site: Site, job: BatchJob) -> list[str]:
        if not job.account_hint or site.account:
            return []
        flag = self.named_flags.get("account", "-A")
        return [
            f"# No account in the catalog or your overrides: submit with `{self.submit} "
            f"{flag} <{self.account_word}>`, or set `account` in",
            f"# deploy/sites/overrides/{site.name}.yaml (or the site's ${{VAR}}) and render again.",
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

    # -- the endpoint ----------------------------------------------------------------------

    def provider_fields(self, site: Site, var: dict[str, str]) -> Fields:
        """The Parsl provider's fields under `provider:` (after `type`). `var` holds the
        endpoint's template expression for each user option (account, queue, ...)."""
        return self.block_fields(site, var)

    def block_fields(self, site: Site, var: dict[str, str]) -> Fields:
        return [
            ("walltime", var["walltime"]),
            ("nodes_per_block", var["nodes_per_block"]),
            ("init_blocks", str(site.init_blocks)),
            ("min_blocks", str(site.min_blocks)),
            ("max_blocks", var["max_blocks"]),
        ]
