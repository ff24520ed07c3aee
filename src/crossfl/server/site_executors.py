"""Open one executor per site entry of an experiment.

A facility (a site with a deploy host) goes through the Globus Compute SDK with the endpoint
UUID that `crossfl deploy` recorded in deploy/state/; a site that runs on this machine (local,
local-slurm) gets its own engine, built from the site's rendered user config. Everything opened is registered on the caller's
ExitStack, so engines are shut down whatever happens."""

from __future__ import annotations

import contextlib
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from crossfl.endpoints import LocalEngineExecutor, remote_executor
from crossfl.server.experiment import SiteEntry
from crossfl.sites import Site


@dataclass
class OpenSite:
    entry: SiteEntry
    executor: Executor
    kind: str  # "local engine" | "globus compute"
    endpoint: str
    nodes: int = 1  # nodes charged while a task runs (the pilot job's block size)


def runs_here(site: Site) -> bool:
    """A site with no login host to deploy to (local, local-slurm) runs on this machine."""
    return site.deploy.host is None


def open_site(entry: SiteEntry, engines_dir: Path) -> OpenSite:
    from crossfl.render import render_site, render_user_config
    from crossfl.sites import load_site
    from crossfl.state import require_endpoint_id

    site = load_site(entry.site)
    if not runs_here(site):
        # A facility: its endpoint must have been deployed and registered (deploy/state/).
        endpoint_id = require_endpoint_id(entry.site)
        executor = remote_executor(endpoint_id, entry.user_options, label=f"crossfl-{entry.name}")
        return OpenSite(entry, executor, "globus compute", endpoint_id, entry.nodes or site.nodes_per_block)
    site_dir = render_site(site)
    text = render_user_config(site_dir, entry.user_options)
    source = str(site_dir / "endpoint" / "user_config_template.yaml.j2")
    executor = LocalEngineExecutor(entry.name, text, engines_dir / entry.name, source=source)
    # a local site is this machine: one node, whatever its catalog entry's block size
    return OpenSite(entry, executor, "local engine", str(executor.endpoint_id), entry.nodes or 1)


def open_sites(entries: list[SiteEntry], engines_dir: Path, stack: contextlib.ExitStack) -> dict[str, OpenSite]:
    from crossfl.sites import load_site
    from crossfl.state import require_endpoint_id

    for entry in entries:  # every facility deployed? say so before starting any engine
        if not runs_here(load_site(entry.site)):
            require_endpoint_id(entry.site)
    opened: dict[str, OpenSite] = {}
    for entry in entries:
        handle = open_site(entry, engines_dir)
        stack.callback(handle.executor.shutdown, wait=True, cancel_futures=True)
        opened[entry.name] = handle
    return opened


def image_records(handles: dict[str, OpenSite]) -> dict[str, dict[str, str | None]]:
    """Which image each site ran and its digest: from deploy/state/ for facilities (what deploy
    staged), from the image file itself for local sites that use one."""
    from crossfl.images import image_digest
    from crossfl.sites import image_arch, load_site
    from crossfl.state import load_state

    records: dict[str, dict[str, str | None]] = {}
    for name, handle in handles.items():
        site = load_site(handle.entry.site)
        record: dict[str, str | None] = {"site": site.name, "runtime": site.container.runtime,
                                         "arch": image_arch(site), "image": None, "digest": None}
        if site.container.runtime != "none":
            state = load_state(site.name) if not runs_here(site) else None
            if state is not None and state.image is not None:
                record.update(image=state.image.remote_path, digest=f"sha256:{state.image.sha256}")
            else:
                record["image"] = site.image()
                if record["image"] and Path(record["image"]).is_file():
                    record["digest"] = image_digest(record["image"])
        records[name] = record
    return records
