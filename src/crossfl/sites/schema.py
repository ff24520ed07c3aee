"""The facility catalog's schema: one pydantic model for `deploy/sites/*.yaml`.

A site file holds facts about a facility; the checks that span several fields are in
`crossfl.sites.rules`, loading (overrides, `${VAR}`s, error messages) in
`crossfl.sites.loading`. What a scheduler allows is its own module's knowledge
(`crossfl.schedulers`), reached through `Site.sched`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from crossfl import paths, schedulers
from crossfl.schedulers import Scheduler, parse_walltime
from crossfl.schema import FieldError, StrictModel
from crossfl.sites import rules

Vendor = Literal["cuda", "rocm", "xpu", "none"]
Arch = Literal["cuda", "rocm", "xpu", "cpu"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# The environment variable each vendor's runtime reads to pick a device.
VISIBLE_DEVICES_ENV: dict[str, str] = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "rocm": "ROCR_VISIBLE_DEVICES",
    "xpu": "ZE_AFFINITY_MASK",
}


class Queue(StrictModel):
    """Limits of one queue/partition, as published by the facility."""
    max_walltime: str | None = None
    max_nodes: int | None = Field(default=None, ge=1)

    @field_validator("max_walltime")
    @classmethod
    def _wt(cls, v: str | None) -> str | None:
        if v is not None:
            parse_walltime(v)
        return v


class Accelerator(StrictModel):
    vendor: Vendor = "none"
    devices_per_node: int = Field(default=0, ge=0)
    # What Parsl's worker pool hands out, one per worker (e.g. Aurora tiles "0.0".."5.1").
    # Default: "0".."N-1".
    ids: list[str] | None = None
    # How batch-job ranks reach their device: the scheduler does it (srun --gpus-per-task),
    # a wrapper picks from the local rank (PALS mpiexec), or nothing (CPU / one process).
    bind: Literal["scheduler", "local-rank", "none"] = "none"
    # Device for local rank i in batch jobs (Polaris binds in reverse: ["3", "2", "1", "0"];
    # Aurora addresses flat tiles "0".."11" there); default: the ids.
    rank_order: list[str] | None = None
    # Environment for the endpoint's workers (which get `ids`) and for batch-job ranks (which
    # get `rank_order`): e.g. Aurora's tile ids "X.Y" need ZE_FLAT_DEVICE_HIERARCHY=COMPOSITE,
    # flat indices need FLAT. Exported on the host and, with a container, into it.
    worker_env: dict[str, str] = Field(default_factory=dict)
    rank_env: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Accelerator:
        if self.vendor == "none" and self.devices_per_node:
            raise ValueError(f"vendor 'none' has no devices but devices_per_node is "
                             f"{self.devices_per_node}: set devices_per_node: 0 or name the "
                             "vendor (cuda, rocm, xpu)")
        if self.vendor != "none" and not self.devices_per_node:
            raise ValueError(f"vendor {self.vendor!r} has no devices_per_node: give the "
                             "devices_per_node of one compute node (e.g. 4)")
        if self.ids is not None and len(self.ids) != self.devices_per_node:
            raise ValueError(f"devices_per_node is {self.devices_per_node} but ids lists "
                             f"{len(self.ids)} devices: make them match")
        if self.rank_order is not None and (len(self.rank_order) != self.devices_per_node
                                            or len(set(self.rank_order)) != len(self.rank_order)):
            raise ValueError(f"rank_order has {len(self.rank_order)} entries for "
                             f"{self.devices_per_node} devices: name {self.devices_per_node} "
                             "distinct devices, one per local rank")
        if self.vendor == "none" and self.bind != "none":
            raise ValueError("there are no devices to bind: set bind: none")
        return self

    @property
    def device_ids(self) -> list[str]:
        if self.ids is not None:
            return list(self.ids)
        return [str(i) for i in range(self.devices_per_node)]

    @property
    def rank_devices(self) -> list[str]:
        return list(self.rank_order) if self.rank_order is not None else self.device_ids

    @property
    def visible_devices_env(self) -> str | None:
        return VISIBLE_DEVICES_ENV.get(self.vendor)


class Proxy(StrictModel):
    http: str | None = None
    https: str | None = None
    no_proxy: str | None = None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.http:
            out["http_proxy"] = out["HTTP_PROXY"] = self.http
        if self.https:
            out["https_proxy"] = out["HTTPS_PROXY"] = self.https
        if self.no_proxy:
            out["no_proxy"] = out["NO_PROXY"] = self.no_proxy
        return out


class ImageBuild(StrictModel):
    """How an image is built at the facility (Polaris: on a compute node with fakeroot)."""
    on_compute_node: bool = False
    directives: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    module_use: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    options: list[str] = Field(default_factory=lambda: ["--fakeroot"])
    walltime: str = "01:00:00"
    queue: str | None = None


# A registry reference pinned by digest: what `image_source.ref` must be (a tag can move).
DIGEST_REF = re.compile(r"^(oras|docker)://[^\s@]+@sha256:[0-9a-f]{64}$")


class ImageSource(StrictModel):
    """Where `crossfl deploy` gets the site's image from (the image then lives at the path in
    `images`, on the project filesystem). A 10-20 GB image is not uploaded from a laptop:
    build: on the facility, on the login node, or as the batch build job (batch/build_image.sh)
      where `build.on_compute_node` says the facility builds on compute nodes; verified by the
      image's labels (git commit, pins) and its sha256 recorded;
    pull: `apptainer pull` of `ref`, a registry reference pinned by digest
      (oras://HOST/REPO@sha256:<64 hex> for a SIF, docker://HOST/REPO@sha256:<64 hex>);
    upload: this checkout's build/images/crossfl-ARCH.sif, resumable and checksummed."""
    method: Literal["build", "pull", "upload"] = "upload"
    ref: str | None = None

    @field_validator("ref")
    @classmethod
    def _by_digest(cls, v: str | None) -> str | None:
        if v is not None and not DIGEST_REF.match(v):
            head = v.split("://", 1)[0] if "://" in v else "oras"
            raise ValueError(f"{v!r} is not pinned by digest: a tag can move, so give "
                             f"{head}://HOST/REPO@sha256:<64 hex digest> (the digest your push "
                             "printed; `oras manifest fetch --descriptor REF` or `skopeo "
                             "inspect docker://REF` prints it)")
        return v

    @model_validator(mode="after")
    def _pull_needs_ref(self) -> ImageSource:
        if self.method == "pull" and self.ref is None:
            raise ValueError("method pull needs ref: the image's registry reference by digest "
                             "(oras://HOST/REPO@sha256:...), in your overrides file")
        return self


class Container(StrictModel):
    # custom: Globus Compute's `container_type: custom`; `command` is the whole launch command,
    # with {EXECUTOR_RUNDIR} and {EXECUTOR_LAUNCH_CMD} (e.g. make image-check's bubblewrap).
    runtime: Literal["apptainer", "custom", "none"] = "none"
    command: str = ""
    # Image per architecture (cuda, rocm, xpu, cpu). `{{remote_root}}`, `{{site}}` and
    # `{{project_root}}` (this checkout) are replaced when rendering, in images, binds,
    # worker_init and endpoint.worker_init_default; `$HOME` etc. stay for the job's shell.
    images: dict[Arch, str] = Field(default_factory=dict)
    binds: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # Extra flags for `apptainer exec/run` (e.g. Polaris' --fakeroot). The GPU flag
    # (--nv / --rocm) is added from the accelerator vendor.
    options: list[str] = Field(default_factory=list)
    build: ImageBuild | None = None
    image_source: ImageSource = Field(default_factory=ImageSource)

    @model_validator(mode="after")
    def _custom_command(self) -> Container:
        if self.runtime == "custom":
            if "{EXECUTOR_LAUNCH_CMD}" not in self.command:
                raise ValueError("runtime custom needs `command` with {EXECUTOR_LAUNCH_CMD} "
                                 "(where the worker command goes)")
            rest = self.command.replace("{EXECUTOR_LAUNCH_CMD}", "").replace(
                "{EXECUTOR_RUNDIR}", "")
            if "{" in rest or "}" in rest:
                raise ValueError("`command` may hold no braces besides {EXECUTOR_RUNDIR} and "
                                 "{EXECUTOR_LAUNCH_CMD}: Parsl formats the launch command")
        elif self.command:
            raise ValueError("`command` is for runtime custom only")
        return self


class Launcher(StrictModel):
    type: Literal["srun", "mpiexec", "single"] = "single"
    # Extra launcher options, e.g. "--cpu-bind=cores" or "--cpu-bind depth --depth=64".
    options: str = ""


class Endpoint(StrictModel):
    # single-user: your own endpoint. multi-user: started by root (an admin), mapping Globus
    # identities of `identity_domain` to local accounts of the same name.
    mode: Literal["single-user", "multi-user"] = "single-user"
    identity_domain: str | None = None
    # Environment of the user endpoint processes (user_environment.yaml).
    environment: dict[str, str] = Field(default_factory=dict)
    display_name: str | None = None
    allowed_functions: list[str] = Field(default_factory=list)
    encrypted: bool = True
    # Network interface the workers use to reach the interchange (hsn0 on Slingshot).
    address_interface: str | None = None
    max_workers_per_node: int | None = Field(default=None, ge=1)
    cpu_affinity: str = "none"
    # Default of the endpoint's `worker_init` option (the user's own lines, after the site's).
    worker_init_default: str = ""
    idle_heartbeats_soft: int = 10
    idle_heartbeats_hard: int = 5760

    @model_validator(mode="after")
    def _mode(self) -> Endpoint:
        if self.mode == "multi-user" and not self.identity_domain:
            raise ValueError("a multi-user endpoint maps Globus identities to local accounts: "
                             "set endpoint.identity_domain (e.g. anl.gov)")
        return self


class Deploy(StrictModel):
    host: str | None = None
    user: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    remote_root: str = ""
    endpoint_name: str = ""
    python_activate: str | None = None
    data_dir: str | None = None


class Site(StrictModel):
    name: str
    description: str = ""
    docs: list[str] = Field(default_factory=list)
    scheduler: str  # a name from crossfl.schedulers (slurm, pbs, local)
    account: str | None = None
    # A rule the facility sets on account names (regex), e.g. Perlmutter GPU jobs: "_g$".
    account_pattern: str | None = None
    queue: str | None = None  # the partition on Slurm
    qos: str | None = None
    constraint: str | None = None  # Slurm -C
    # Published limits per queue (PBS), partition or QOS (Slurm; see limits_by).
    queues: dict[str, Queue] = Field(default_factory=dict)
    limits_by: Literal["queue", "qos"] = "queue"
    walltime: str = "01:00:00"
    nodes_per_block: int = Field(default=1, ge=1)
    init_blocks: int = Field(default=0, ge=0)
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    cpus_per_node: int | None = Field(default=None, ge=1)  # PBS select ncpus
    select_options: str = ""  # PBS select chunk extras, e.g. "system=polaris"
    accelerator: Accelerator = Field(default_factory=Accelerator)
    cpu_bind: str | None = None  # batch-job binding, e.g. "--cpu-bind=cores" / "list:1-8:..."
    filesystems: list[str] = Field(default_factory=list)
    allowed_filesystems: list[str] | None = None
    directives: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    module_use: list[str] = Field(default_factory=list)
    proxy: Proxy = Field(default_factory=Proxy)
    env: dict[str, str] = Field(default_factory=dict)
    container: Container = Field(default_factory=Container)
    launcher: Launcher = Field(default_factory=Launcher)
    worker_init: list[str] = Field(default_factory=list)
    endpoint: Endpoint = Field(default_factory=Endpoint)
    deploy: Deploy = Field(default_factory=Deploy)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"site name {v!r} must be lower-case letters, digits, - or _")
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v not in schedulers.names():
            raise ValueError(f"unknown scheduler {v!r}: use one of "
                             f"{', '.join(sorted(schedulers.names()))}")
        return v

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str) -> str:
        parse_walltime(v)
        return v

    @field_validator("account", "queue", "qos", "constraint", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _checks(self) -> Site:
        if self.min_blocks > self.max_blocks or self.init_blocks > self.max_blocks:
            raise FieldError("max_blocks", f"max_blocks {self.max_blocks} is below min_blocks "
                              f"{self.min_blocks} or init_blocks {self.init_blocks}: raise it")
        if not self.deploy.remote_root:
            self.deploy.remote_root = f"~/.crossfl/{self.name}"
        if not self.deploy.endpoint_name:
            self.deploy.endpoint_name = f"crossfl-{self.name}"
        rules.check(self)
        return self

    @property
    def sched(self) -> Scheduler:
        """What this site's scheduler allows and how it writes jobs (crossfl.schedulers)."""
        return schedulers.get(self.scheduler)

    def limited_by(self) -> str | None:
        """The queue or QOS name whose published limits apply."""
        return self.qos if self.limits_by == "qos" else self.queue

    def queue_limit(self) -> Queue | None:
        key = self.limited_by()
        return self.queues.get(key) if key else None

    @property
    def arch(self) -> str:
        return image_arch(self)

    def image(self) -> str | None:
        """The image path for this site's architecture, placeholders filled."""
        if self.container.runtime == "none":
            return None
        return self.fill(self.container.images[image_arch(self)])

    def fill(self, text: str) -> str:
        root = self.deploy.remote_root
        if root.startswith("~/"):
            root = "$HOME/" + root[2:]
        return (text.replace("{{remote_root}}", root).replace("{{site}}", self.name)
                .replace("{{project_root}}", str(paths.project_root())))


def image_arch(site: Site) -> str:
    """The image architecture the site's accelerator needs: cuda, rocm, xpu or cpu."""
    vendor = site.accelerator.vendor
    return "cpu" if vendor == "none" else vendor


