"""Open the executor of a planned site.

A facility goes through the Globus Compute SDK with the endpoint UUID that `crossfl deploy`
recorded (found by the plan); a site that runs on this machine (local, local-slurm) gets its
own engine, started from the user endpoint config the plan rendered and loaded. A site whose
endpoint runs the MPI engine takes ShellFunctions with a resource specification each
(crossfl.server.mpi_tasks.MpiSiteExecutor around either). The caller shuts it down (the run
lifecycle registers it on its ExitStack at once).

A batch site that runs here (local-slurm) also gets a ``SchedulerControl``: the dispatch
policy asks its scheduler when a new pilot would start (Slurm ``sbatch --test-only``; the
scheduler's idioms are in crossfl.schedulers). A facility's login node is reached over SSH
by crossfl.deploy, which the server does not import: facilities give no estimate here and
the policy learns their waits from their pilots."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from crossfl.endpoints import LocalEngineExecutor, remote_executor
from crossfl.functions import registered_functions
from crossfl.server.mpi_tasks import MpiSiteExecutor
from crossfl.server.plan import SitePlan

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


def run_here(command: str) -> tuple[str, int]:
    """A scheduler query on this machine: its output (stdout and stderr) and status."""
    try:
        proc = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc), 1
    return proc.stdout + proc.stderr, proc.returncode


@dataclass
class SchedulerControl:
    """A live site's levers, as far as a run can reach them: the scheduler's start estimate
    for a pilot of the site's shape (asked at most every ``every_s``). The idle settings go
    to the endpoint once, as user options, when the plan renders its config."""

    site: SitePlan
    run: Callable[[str], tuple[str, int]] = run_here
    every_s: float = 300.0
    _asked: tuple[float, float | None] | None = field(default=None, repr=False)

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
        now = time.monotonic()
        if self._asked is not None and now - self._asked[0] < self.every_s:
            return self._asked[1]
        catalog = self.site.catalog
        options = self.site.user_options
        line = catalog.sched.start_test_command(
            nodes=self.nodes,
            walltime_s=int(self.walltime_s),
            queue=options.get("queue") or catalog.queue,
            account=options.get("account") or catalog.account,
        )
        estimate = None
        if line is not None:
            text, rc = self.run(line)
            start = catalog.sched.parse_start(text, rc)
            if start is not None:
                estimate = max(0.0, (start - datetime.now()).total_seconds())
        self._asked = (now, estimate)
        return estimate


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
    control = SchedulerControl(site) if site.runs_here and site.catalog.sched.batch else None
    return OpenSite(site, MpiSiteExecutor(executor) if site.mpi else executor, endpoint, control)
