"""Open the executor of a planned site.

A facility goes through the Globus Compute SDK with the endpoint UUID that `crossfl deploy`
recorded (found by the plan); a site that runs on this machine (local, local-slurm) gets its
own engine, started from the user endpoint config the plan rendered and loaded. A site whose
endpoint runs the MPI engine takes ShellFunctions with a resource specification each
(crossfl.server.mpi_tasks.MpiSiteExecutor around either). The caller shuts it down (the run
lifecycle registers it on its ExitStack at once)."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from crossfl.endpoints import LocalEngineExecutor, remote_executor
from crossfl.server.mpi_tasks import MpiSiteExecutor
from crossfl.server.plan import SitePlan


@dataclass
class OpenSite:
    site: SitePlan
    executor: Executor
    endpoint: str

    @property
    def kind(self) -> str:
        return self.site.kind


def open_site(site: SitePlan, engines_dir: Path) -> OpenSite:
    if not site.runs_here:
        assert site.endpoint_id is not None  # found by the plan
        executor: Executor = remote_executor(
            site.endpoint_id,
            site.user_options,
            label=f"crossfl-{site.name}",
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
    return OpenSite(site, MpiSiteExecutor(executor) if site.mpi else executor, endpoint)
