"""What the deploy steps share (crossfl.deploy.steps): one `Deployment`, and the `DeployOutcome`
it reports. Its own module, so the step modules (image, podman, endpoint_env) and steps.py
all import it and none of them the others for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from crossfl.deploy import gce
from crossfl.deploy.remote import Remote, Target
from crossfl.sites import Site
from crossfl.state import DeployState, now, save_state

BUILD_WAIT_S = 4 * 3600  # how long deploy waits for an image build job, by default


@dataclass
class DeployOutcome:
    site: str
    changed: list[str] = field(default_factory=list)
    endpoint_id: str | None = None
    state_file: Path | None = None


@dataclass
class Deployment:
    """What the steps share: the site and its rendered bundle, the open connection and what
    the login node said, the state being recorded, and what changed so far."""

    site: Site
    target: Target
    remote: Remote
    info: gce.LoginInfo
    state: DeployState
    bundle: Path
    digest: str
    image: Path | None = None  # the image built here, for sites that upload theirs
    data: Path | None = None
    start: bool = True
    email: str | None = None
    console: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))
    build_wait_s: float = BUILD_WAIT_S  # how long to wait for an image build job
    out: DeployOutcome = field(init=False)
    runtime: gce.Runtime | None = None  # the endpoint as the `endpoint` step found it
    changed_files: list[str] = field(default_factory=list)  # endpoint files it replaced

    def __post_init__(self) -> None:
        self.out = DeployOutcome(self.site.name)

    @property
    def dry_run(self) -> bool:
        return self.remote.dry_run

    def record(self, result: str | None = None, error: str | None = None) -> None:
        """Save the state file (not in a dry run)."""
        if self.dry_run:
            return
        self.state.last_deploy = now()
        if result:
            self.state.last_result = result  # type: ignore[assignment]
        self.state.last_error = error
        self.out.state_file = save_state(self.state)
