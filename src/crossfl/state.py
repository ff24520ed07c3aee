"""What `crossfl deploy` did at a site: `deploy/state/<site>.json` (ignored by git).

The server reads it to find a site's endpoint UUID (`require_endpoint_id`). The file only
claims what happened: `endpoint_id` is set only after the Globus service registered the
endpoint (the endpoint wrote `endpoint.json`), `started` only after `start` succeeded.
This module imports neither fabric nor the sites code, so any part of the kit can read it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, ValidationError, model_validator

from crossfl import paths
from crossfl.atomic import atomic_write_text
from crossfl.errors import UserError
from crossfl.schema import StrictModel, user_error

Phase = Literal["new", "uploaded", "configured", "started", "stopped"]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]*$")]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class ImageState(StrictModel):
    """The container image in place at the site (its sha256 taken there with sha256sum)."""

    arch: str
    source: Literal["upload", "build", "pull"] = "upload"
    # What it was placed from, as `<image>.origin` says there: "pull <ref>", "build <key of the
    # def file and its context>"; None for an upload (the sha256 says it).
    origin: str | None = None
    local_path: str | None = None  # the file uploaded from this checkout
    remote_path: str
    sha256: str
    size: int = Field(ge=0)
    local_mtime_ns: int | None = None  # lets the next deploy skip re-hashing an unchanged file
    labels: dict[str, str] = Field(default_factory=dict)  # `apptainer inspect --labels` there
    staged_at: datetime
    # podman-hpc: `sha256` is the image's ID (what the endpoint and the ranks run it by) and
    # `remote_path` its name:tag; `digest` its manifest digest (`podman image inspect`'s Digest)
    digest: str | None = None


class BuildJob(StrictModel):
    """An image build started at the site and not yet verified: the next deploy waits for
    it instead of starting another."""

    where: Literal["login", "batch"]
    job_id: str  # the scheduler's job id, or the process id on the login node
    host: str | None = None  # the login node running it (login builds)
    key: str  # the build it runs (ImageState.origin once verified)
    output: str  # its output file there
    started_at: datetime


class DataState(StrictModel):
    """Site-local data uploaded with `crossfl deploy SITE --data PATH`."""

    local_path: str
    remote_path: str
    sha256: str  # digest of the file, or of the sorted per-file digests of a directory
    size: int = Field(ge=0)
    uploaded_at: datetime


class FunctionState(StrictModel):
    """One of the kit's functions (crossfl.functions) as registered with Globus Compute."""

    function_id: str
    name: str
    digest: str  # what was registered: a new digest registers again, under a new id
    registered_at: datetime


class EndpointEnvState(StrictModel):
    """The login node's endpoint venv as deploy made it (crossfl.deploy.endpoint_env)."""

    venv: str  # as the site names it (~ for the home directory)
    interpreter: str  # the interpreter it was made with, resolved on the login node
    source: str  # the site's deploy.python: module ..., standalone URL sha256:..., path ...
    key: str  # sha256 of that source and the requirement files
    versions: dict[str, str]  # python and the version rule's packages, as installed there
    made_at: datetime


class EndpointState(StrictModel):
    name: str
    dir: str | None = None  # ~/.globus_compute/<name> on the login node, resolved
    configured: bool = False
    installed_bundle_sha256: str | None = None  # the bundle whose endpoint files are in `dir`
    started: bool = False
    endpoint_id: str | None = None  # only from endpoint.json, written after registration
    started_at: datetime | None = None
    # What deploy itself put in config.yaml's lists last time (the rest is an admin's: kept)
    allowed_functions: list[str] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)
    authentication_policy: str | None = None
    # The login node the endpoint process runs on (`hostname -f` there when it started): where
    # status, logs, stop and the next deploy look for it (login hosts are load-balanced). A
    # host name (it goes to ssh, quoted, and must not read as an option).
    login_host: HostName | None = None

    @model_validator(mode="after")
    def _honest(self) -> EndpointState:
        if self.started and not self.endpoint_id:
            raise ValueError("an endpoint cannot be started without a registered endpoint_id")
        if self.started and not self.configured:
            raise ValueError("an endpoint cannot be started before it is configured")
        return self


class DeployState(StrictModel):
    schema_version: Literal[1] = 1
    site: str
    host: str
    user: str | None = None
    port: int | None = None
    remote_root: str  # absolute path on the login node once resolved
    bundle_sha256: str | None = None  # the bundle that is in place at remote_root/bundle
    bundle_uploaded_at: datetime | None = None
    image: ImageState | None = None
    image_build: BuildJob | None = None
    endpoint_env: EndpointEnvState | None = None
    data: list[DataState] = Field(default_factory=list)
    functions: dict[str, FunctionState] = Field(default_factory=dict)  # task kind -> function
    endpoint: EndpointState
    last_deploy: datetime | None = None
    last_result: Literal["ok", "unchanged", "failed"] | None = None
    last_error: str | None = None

    @property
    def phase(self) -> Phase:
        if self.endpoint.started:
            return "started"
        if self.endpoint.configured:
            return "stopped" if self.endpoint.endpoint_id else "configured"
        if self.bundle_sha256:
            return "uploaded"
        return "new"


def state_path(site: str) -> Path:
    return paths.state_dir() / f"{site}.json"


def load_state(site: str) -> DeployState | None:
    """The recorded state of `site`, or None when it was never deployed."""
    path = state_path(site)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return DeployState.model_validate_json(text)
    except ValidationError as exc:
        raise user_error(
            exc,
            file=path,
            what="deploy state is unreadable",
            fix=f"delete it and run `crossfl deploy {site}` again",
        ) from None


def save_state(state: DeployState) -> Path:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    state = DeployState.model_validate(state.model_dump())  # checks made after mutation too
    return atomic_write_text(state_path(state.site), state.model_dump_json(indent=2) + "\n")


def require_endpoint_id(site: str) -> str:
    """The registered endpoint UUID of `site`; a UserError saying what to run otherwise."""
    state = load_state(site)
    if state is None:
        raise UserError(
            f"site {site} was never deployed",
            file=state_path(site),
            fix=f"run `make deploy SITE={site}`",
        )
    if not state.endpoint.endpoint_id:
        raise UserError(
            f"site {site} has no registered endpoint (phase: {state.phase})",
            file=state_path(site),
            fix=f"run `crossfl deploy {site}` where the Globus service is reachable",
        )
    return state.endpoint.endpoint_id
