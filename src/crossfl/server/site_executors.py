"""Open the executor of a planned site.

A facility goes through the Globus Compute SDK with the endpoint UUID that `crossfl deploy`
recorded (found by the plan); a site that runs on this machine (local, local-slurm) gets its
own engine, started from the user endpoint config the plan rendered and loaded. A site whose
endpoint runs the MPI engine takes ShellFunctions with a resource specification each
(crossfl.server.mpi_tasks.MpiSiteExecutor around either). The caller shuts it down (the run
lifecycle registers it on its ExitStack at once).

A batch site also gets a ``SchedulerControl``: the dispatch policy asks its scheduler when
its next pilot would start: the earliest estimate among the endpoint's own queued pilots
(Slurm ``squeue --start``, PBS Pro ``qstat -f`` estimated.start_time), else, on Slurm, a
test submission of a pilot's shape (``sbatch --test-only``); the scheduler's idioms are in
crossfl.schedulers. A site that runs here asks on this machine; a facility's scheduler is
asked on its login node over crossfl.deploy's SSH path (known host keys only, the script on
stdin), at most every five minutes; a failure there costs the estimate, never the run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from crossfl.endpoints import LocalEngineExecutor, remote_executor
from crossfl.functions import registered_functions
from crossfl.redact import redact
from crossfl.server.mpi_tasks import MpiSiteExecutor
from crossfl.server.plan import SitePlan
from crossfl.sites import Site

if TYPE_CHECKING:
    from crossfl.server.dispatch import SiteControl


@dataclass
class OpenSite:
    site: SitePlan
    executor: Executor
    endpoint: str
    control: SiteControl | None = None  # the levers on its pilots (crossfl.server.dispatch)

    @property
    def kind(self) -> str:
        return self.site.kind


QUERY_TIMEOUT_S = 30  # one scheduler query, here or on a login node
UNREACHED = 255  # the status of a query that never reached the scheduler (as ssh's own)
# The job name Parsl gives an engine's pilots: `parsl.{executor label}.block-{N}.{time}`
# (parsl/executors/status_handling.py `_launch_block`, providers/slurm/slurm.py and
# providers/pbspro/pbspro.py `submit`); the engine labels its executor
# `{engine class}-{executor class}` (globus_compute_endpoint/engines/globus_compute.py), and
# crossfl's endpoint templates set no label. Pinned Parsl/Globus Compute, checked 2026-12-07.
PILOT_NAMES = {
    True: "parsl.GlobusMPIEngine-MPIExecutor.block-",
    False: "parsl.GlobusComputeEngine-HighThroughputExecutor.block-",
}


def run_here(command: str) -> tuple[str, int]:
    """A scheduler query on this machine: its output (stdout and stderr) and status."""
    try:
        proc = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc), 1
    return proc.stdout + proc.stderr, proc.returncode


@dataclass
class LoginNode:
    """A scheduler query on a facility's login node, through crossfl.deploy's SSH path
    (the site's deploy.host/user/port and ~/.ssh/config with its ProxyJump; host keys from
    known_hosts only; the line on the login shell's stdin): its output and status. A
    connection per query (queries are minutes apart). Any failure (no deploy.host, a
    refused key, an unknown host key, a timeout) returns its one-line reason and UNREACHED."""

    site: Site
    timeout_s: int = QUERY_TIMEOUT_S

    def __call__(self, command: str) -> tuple[str, int]:
        from rich.console import Console

        from crossfl.deploy.flow import target_of
        from crossfl.deploy.remote import Remote

        try:
            with Remote(target_of(self.site), console=Console(quiet=True)) as remote:
                res = remote.run(command, timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - a lost estimate must not stop the run
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return reason.strip().splitlines()[0] if reason.strip() else "failed", UNREACHED
        return res.stdout + res.stderr, res.rc


def _say(line: str) -> None:
    print(textwrap.fill(line, 80, subsequent_indent="  "), file=sys.stderr, flush=True)


@dataclass
class SchedulerControl:
    """A live site's levers, as far as a run can reach them: the scheduler's start estimate
    for the site's next pilot (asked at most every ``every_s``). The idle settings go to the
    endpoint once, as user options, when the plan renders its config."""

    site: SitePlan
    run: Callable[[str], tuple[str, int]] = run_here
    every_s: float = 300.0
    warn: Callable[[str], None] = _say
    clock: Callable[[], float] = time.monotonic
    # (when asked, the estimated start on `clock`'s scale or None), both by `clock`
    _asked: tuple[float, float | None] | None = field(default=None, repr=False)
    _warned: bool = field(default=False, repr=False)

    @property
    def nodes(self) -> int:
        return self.site.held_nodes

    @property
    def walltime_s(self) -> float:
        from crossfl.server.dispatch import pilot_walltime_s

        return pilot_walltime_s(self.site.catalog, self.site.user_options) or 3600.0

    def set_idle(self, *, max_idletime_s: float) -> None:
        """Fixed for the run (the endpoint's user options)."""

    def set_drain(self, drain_s: float) -> None:
        """Not a user option of the rendered endpoint yet."""

    def set_walltime(self, walltime_s: float) -> None:
        """Fixed for the run (the endpoint's user options)."""

    def request_pilot(self) -> bool:
        return False

    def pilots(self) -> list[tuple[float, float | None, float | None]] | None:
        return None

    def walltime_choices(self) -> list[float]:
        return [self.walltime_s]

    def start_estimate_s(self) -> float | None:
        """Seconds until the site's next pilot is expected to start. The scheduler names a
        time, so a kept answer counts down until it is asked again."""
        now = self.clock()
        if self._asked is None or now - self._asked[0] >= self.every_s:
            estimate, reached = self._queued_start()
            if estimate is None and reached:
                estimate = self._test_start()
            self._asked = (now, None if estimate is None else now + estimate)
        start = self._asked[1]
        return None if start is None else max(0.0, start - now)

    def _ask(self, line: str) -> tuple[str, int]:
        """`line` with the scheduler's times in UTC (the login node's zone is not ours)."""
        text, rc = self.run(f"export TZ=UTC\n{line}")
        if rc != 0 and not self._warned:
            self._warned = True
            last = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
            why = redact(last[-1]).removeprefix(f"site {self.site.name}: ") if last else f"rc {rc}"
            self.warn(
                f"site {self.site.name}: no start estimate from its scheduler ({why}); "
                "the policy goes on without it"
            )
        return text, rc

    def _seconds(self, start: datetime) -> float:
        return max(0.0, (start - datetime.now(UTC).replace(tzinfo=None)).total_seconds())

    def _queued_start(self) -> tuple[float | None, bool]:
        """The earliest estimated start among the endpoint's own queued pilots, and whether
        the scheduler was reached."""
        sched = self.site.catalog.sched
        line = sched.queued_starts_command()
        if line is None:
            return None, True
        text, rc = self._ask(line)
        starts = sched.parse_queued_starts(text, rc, PILOT_NAMES[self.site.mpi])
        return (self._seconds(min(starts)) if starts else None), rc != UNREACHED

    def _test_start(self) -> float | None:
        """When a pilot of the site's shape would start if submitted now."""
        catalog, options = self.site.catalog, self.site.user_options
        line = catalog.sched.start_test_command(
            nodes=self.nodes,
            walltime_s=int(self.walltime_s),
            queue=options.get("queue") or catalog.queue,
            account=options.get("account") or catalog.account,
        )
        if line is None:
            return None
        text, rc = self._ask(line)
        start = catalog.sched.parse_start(text, rc)
        return self._seconds(start) if start is not None else None


def scheduler_control(site: SitePlan) -> SchedulerControl | None:
    """A batch site's control: its scheduler asked here, or on its login node."""
    if not site.catalog.sched.batch:
        return None
    return SchedulerControl(site, run=run_here if site.runs_here else LoginNode(site.catalog))


def open_site(site: SitePlan, engines_dir: Path) -> OpenSite:
    if not site.runs_here:
        assert site.endpoint_id is not None  # found by the plan
        executor: Executor = remote_executor(
            site.endpoint_id,
            site.user_options,
            label=f"crossfl-{site.name}",
            json_data=site.mpi,
            function_ids=registered_functions(site.catalog),
            site=site.name,
            shell_results=site.mpi,
        )
        endpoint = site.endpoint_id
    else:
        local = LocalEngineExecutor(
            site.name,
            site.engine_config,
            engines_dir / site.name,
            source=site.engine_source,
            shell_results=site.mpi,
        )
        executor, endpoint = local, str(local.endpoint_id)
    control = scheduler_control(site)
    return OpenSite(site, MpiSiteExecutor(executor) if site.mpi else executor, endpoint, control)
