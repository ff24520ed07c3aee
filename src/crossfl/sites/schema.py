"""The facility catalog's schema: one pydantic model for `deploy/sites/*.yaml`.

A site file holds facts about a facility; the checks that span several fields are in
`crossfl.sites.catalog_rules`, loading (overrides, `${VAR}`s, error messages) in
`crossfl.sites.loading`. What a scheduler allows is its own module's knowledge
(`crossfl.schedulers`), reached through `Site.sched`.

A published fact carries its citation as data beside it: `source: {url, checked}` on every
queue/partition/QOS entry and on the node diagram, with `unverified` naming the facts the
facility's own pages did not confirm (so `crossfl doctor` can compare them with the scheduler).
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from crossfl import paths, schedulers
from crossfl.errors import UserError
from crossfl.quoting import home_path
from crossfl.schedulers import Scheduler, parse_walltime
from crossfl.schedulers.spec import cpu_list
from crossfl.schema import FieldError, StrictModel
from crossfl.sites import values as v

Vendor = Literal["cuda", "rocm", "xpu", "none"]
Arch = Literal["cuda", "rocm", "xpu", "cpu"]
Runtime = Literal["apptainer", "podman-hpc", "custom", "none"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# The environment variable each vendor's runtime reads to pick a device.
VISIBLE_DEVICES_ENV: dict[str, str] = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "rocm": "ROCR_VISIBLE_DEVICES",
    "xpu": "ZE_AFFINITY_MASK",
}


def _walltime(v: str | None) -> str | None:
    if v is not None:
        parse_walltime(v)
    return v


class Source(StrictModel):
    """Where a fact was read and when: the citation, as data."""

    url: str
    checked: datetime.date
    note: str = ""  # what the page says (quoted or summarised), or why a fact is unverified

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError(f"source url {v!r} is not a web address: give the page's URL")
        return v


class Bin(StrictModel):
    """The walltime a range of node counts may ask for (a job-size bin, or one of the execution
    queues a routing queue sends jobs to)."""

    min_nodes: int = Field(ge=1)
    max_nodes: int = Field(ge=1)
    max_walltime: str
    name: str | None = None  # the execution queue, e.g. "small"

    @field_validator("max_walltime")
    @classmethod
    def _wt(cls, v: str) -> str:
        parse_walltime(v)
        return v

    @model_validator(mode="after")
    def _range(self) -> Bin:
        if self.max_nodes < self.min_nodes:
            raise ValueError(
                f"bin {self.min_nodes}-{self.max_nodes} nodes runs backwards: "
                "give min_nodes <= max_nodes"
            )
        return self


class Part(StrictModel):
    """What one job gets on a node shared with other jobs (e.g. Perlmutter's shared QOS)."""

    devices: int = Field(1, ge=1, le=1)  # one GPU: Slurm's own CUDA_VISIBLE_DEVICES is kept
    cpus: int = Field(ge=1)  # as the scheduler counts them (Slurm -c)


# The facts a queue entry may hold; `unverified` names some of them.
QUEUE_FACTS = (
    "min_nodes",
    "max_nodes",
    "min_walltime",
    "max_walltime",
    "bins",
    "running_per_user",
    "jobs_per_user",
    "running_per_project",
    "jobs_per_project",
    "production",
    "part",
    "by_request",
    "facility_default",
)


class Queue(StrictModel):
    """What the facility publishes for one queue, partition or QOS. `max_walltime` and
    `max_nodes` are the entry's overall maxima (with bins: the largest bin's)."""

    min_nodes: int = Field(1, ge=1)
    max_nodes: int | None = Field(default=None, ge=1)
    min_walltime: str | None = None
    max_walltime: str | None = None
    # Node-count bins with the walltime each allows (Frontier's job-size bins, ALCF's routing
    # queues), in increasing node counts.
    bins: list[Bin] = Field(default_factory=list)
    running_per_user: int | None = Field(default=None, ge=1)
    jobs_per_user: int | None = Field(default=None, ge=1)  # in any state (queued, held, running)
    running_per_project: int | None = Field(default=None, ge=1)
    jobs_per_project: int | None = Field(default=None, ge=1)
    production: bool = True  # False: production work is not allowed (debug QOS)
    part: Part | None = None  # a job gets part of one node, not whole nodes
    by_request: bool = False  # the facility enables it per project on request
    facility_default: bool = False  # what a job gets when it names none
    note: str = ""
    source: Source | None = None
    see_also: list[Source] = Field(default_factory=list)
    unverified: list[str] = Field(default_factory=list)
    # The name the scheduler lists it under, where that differs from what a job asks for
    # (Perlmutter: `-q regular -C gpu` runs as QOS gpu_regular): what `crossfl doctor` asks.
    scheduler_name: v.Token | None = None

    @field_validator("min_walltime", "max_walltime")
    @classmethod
    def _wt(cls, v: str | None) -> str | None:
        return _walltime(v)

    @field_validator("unverified")
    @classmethod
    def _facts(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in QUEUE_FACTS]
        if bad:
            raise ValueError(
                f"unverified names {bad}, which are not facts of a queue entry: "
                f"use some of {', '.join(QUEUE_FACTS)}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Queue:
        b = self.bins
        for lo, hi in zip(b, b[1:], strict=False):
            if hi.min_nodes <= lo.max_nodes:
                raise ValueError(
                    f"bins {lo.min_nodes}-{lo.max_nodes} and {hi.min_nodes}-"
                    f"{hi.max_nodes} overlap or are out of order: list them by "
                    "increasing node count"
                )
        if b:
            longest = max((x.max_walltime for x in b), key=parse_walltime)
            from_bins = {
                "min_nodes": b[0].min_nodes,
                "max_nodes": b[-1].max_nodes,
                "max_walltime": longest,
            }
            for name, want in from_bins.items():
                have = getattr(self, name)
                if name in self.model_fields_set and have != want:
                    raise ValueError(
                        f"{name} {have} disagrees with the bins ({want}): drop "
                        f"{name} or make it match"
                    )
            self.min_nodes, self.max_nodes = b[0].min_nodes, b[-1].max_nodes
            self.max_walltime = longest
        if self.part is not None:
            if self.max_nodes not in (None, 1):
                raise ValueError(
                    "an entry whose jobs get part of a node runs on one node: set max_nodes to 1"
                )
            self.max_nodes = 1
        if self.max_nodes is not None and self.max_nodes < self.min_nodes:
            raise ValueError(
                f"max_nodes {self.max_nodes} is below min_nodes {self.min_nodes}: fix one"
            )
        return self

    def walltime_for(self, nodes: int) -> tuple[str | None, Bin | None]:
        """The most walltime `nodes` nodes may ask for, and the bin that says so."""
        for b in self.bins:
            if b.min_nodes <= nodes <= b.max_nodes:
                return b.max_walltime, b
        return self.max_walltime, None


class Node(StrictModel):
    """One compute node, as the facility's node diagram shows it."""

    # The CPUs a job may use (the facility's reserved cores left out), cpu-list syntax.
    cpus: str
    # Device id (as the vendor's visible-devices variable counts it) -> the CPUs nearest it.
    nearest_cpus: dict[str, str] = Field(default_factory=dict)
    source: Source | None = None

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: str) -> str:
        cpu_list(v)
        return v

    @field_validator("nearest_cpus")
    @classmethod
    def _nearest(cls, v: dict[str, str]) -> dict[str, str]:
        for cpus in v.values():
            cpu_list(cpus)
        return v

    def cpu_set(self) -> set[int]:
        return set(cpu_list(self.cpus))


class Accelerator(StrictModel):
    vendor: Vendor = "none"
    devices_per_node: int = Field(default=0, ge=0)
    # What Parsl's worker pool hands out, one per worker, and batch rank i takes ids[i]: the
    # same ids, variables and convention for both. Default: "0".."N-1".
    ids: list[v.Token] | None = None
    # How batch-job ranks reach their device: a wrapper sets what Parsl sets for a worker from
    # the local rank (local-rank), srun --gpus-per-task does it (scheduler), or nothing.
    bind: Literal["scheduler", "local-rank", "none"] = "none"
    # The device convention, for the endpoint's workers and batch ranks alike (e.g. Aurora:
    # ZE_FLAT_DEVICE_HIERARCHY=FLAT, tiles 0-11). Exported on the host and into the container.
    env: dict[v.Ident, v.Line] = Field(default_factory=dict)
    # Stand-in devices (the test cluster's): the catalog lists them but torch runs on CPU.
    simulated: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Accelerator:
        if self.vendor == "none" and self.devices_per_node:
            raise ValueError(
                f"vendor 'none' has no devices but devices_per_node is "
                f"{self.devices_per_node}: set devices_per_node: 0 or name the "
                "vendor (cuda, rocm, xpu)"
            )
        if self.vendor != "none" and not self.devices_per_node:
            raise ValueError(
                f"vendor {self.vendor!r} has no devices_per_node: give the "
                "devices_per_node of one compute node (e.g. 4)"
            )
        if self.ids is not None and (
            len(self.ids) != self.devices_per_node or len(set(self.ids)) != len(self.ids)
        ):
            raise ValueError(
                f"devices_per_node is {self.devices_per_node} but ids lists "
                f"{len(set(self.ids))} distinct devices: make them match"
            )
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
        """The device of local rank i in batch jobs: the workers' ids (one convention)."""
        return self.device_ids

    @property
    def visible_devices_env(self) -> str | None:
        return VISIBLE_DEVICES_ENV.get(self.vendor)


class Proxy(StrictModel):
    http: v.Url | None = None
    https: v.Url | None = None
    no_proxy: v.Url | None = None

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
    directives: list[v.Line] = Field(default_factory=list)
    modules: list[v.Module] = Field(default_factory=list)
    module_use: list[v.Path] = Field(default_factory=list)
    env: dict[v.Ident, v.Line] = Field(default_factory=dict)
    options: list[v.Option] = Field(default_factory=lambda: ["--fakeroot"])
    walltime: str = "01:00:00"
    queue: v.Token | None = None


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
            raise ValueError(
                f"{v!r} is not pinned by digest: a tag can move, so give "
                f"{head}://HOST/REPO@sha256:<64 hex digest> (the digest your push "
                "printed; `oras manifest fetch --descriptor REF` or `skopeo "
                "inspect docker://REF` prints it)"
            )
        return v

    @model_validator(mode="after")
    def _pull_needs_ref(self) -> ImageSource:
        if self.method == "pull" and self.ref is None:
            raise ValueError(
                "method pull needs ref: the image's registry reference by digest "
                "(oras://HOST/REPO@sha256:...), in your overrides file"
            )
        return self


class Container(StrictModel):
    # apptainer: a SIF file; podman-hpc (NERSC): an image name, e.g. crossfl-cuda:TAG;
    # custom: Globus Compute's `container_type: custom`; `command` is the whole launch command,
    # with {EXECUTOR_RUNDIR} and {EXECUTOR_LAUNCH_CMD} (e.g. make image-check's bubblewrap).
    runtime: Runtime = "none"
    command: v.Line = ""
    # Image per architecture (cuda, rocm, xpu, cpu). `{{remote_root}}`, `{{site}}` and
    # `{{project_root}}` (this checkout) are replaced when rendering, in images, binds,
    # worker_init and endpoint.worker_init_default; `$HOME` etc. stay for the job's shell.
    images: dict[Arch, v.Path] = Field(default_factory=dict)
    binds: list[v.Path] = Field(default_factory=list)
    env: dict[v.Ident, v.Line] = Field(default_factory=dict)
    # Extra flags for the runtime (e.g. Polaris' --fakeroot). The GPU flag (--nv / --rocm for
    # Apptainer, --gpu for podman-hpc) is added from the accelerator vendor.
    options: list[v.Option] = Field(default_factory=list)
    build: ImageBuild | None = None
    image_source: ImageSource = Field(default_factory=ImageSource)

    @model_validator(mode="after")
    def _custom_command(self) -> Container:
        if self.runtime == "custom":
            if "{EXECUTOR_LAUNCH_CMD}" not in self.command:
                raise ValueError(
                    "runtime custom needs `command` with {EXECUTOR_LAUNCH_CMD} "
                    "(where the worker command goes)"
                )
            rest = self.command.replace("{EXECUTOR_LAUNCH_CMD}", "").replace(
                "{EXECUTOR_RUNDIR}", ""
            )
            if "{" in rest or "}" in rest:
                raise ValueError(
                    "`command` may hold no braces besides {EXECUTOR_RUNDIR} and "
                    "{EXECUTOR_LAUNCH_CMD}: Parsl formats the launch command"
                )
        elif self.command:
            raise ValueError("`command` is for runtime custom only")
        return self


class LauncherSettings(StrictModel):
    type: Literal["srun", "mpiexec", "single"] = "single"
    # Extra options for the pilot's launcher (srun's -c is computed from cpus_per_node).
    options: v.Options = ""
    # A batch rank's index on its node, where the facility documents a variable other than the
    # scheduler's default (Aurora's PALS: PALS_LOCAL_RANKID).
    local_rank_env: v.Ident | None = None


class Endpoint(StrictModel):
    # single-user: your own endpoint. multi-user: started by root (an admin), mapping Globus
    # identities of `identity_domain` to local accounts of the same name.
    mode: Literal["single-user", "multi-user"] = "single-user"
    identity_domain: v.Word | None = None
    # Environment of the user endpoint processes (user_environment.yaml).
    environment: dict[v.Ident, v.Line] = Field(default_factory=dict)
    display_name: v.Line | None = None
    # Functions the endpoint runs besides the kit's own (which deploy registers and adds).
    allowed_functions: list[v.Uuid] = Field(default_factory=list)
    # A Globus authentication policy every identity sending tasks must satisfy (e.g. a
    # domain, recent login), and the Globus identities that may administer the endpoint
    # besides its owner (needs a subscription): Globus Compute's own config.yaml keys.
    authentication_policy: v.Uuid | None = None
    admins: list[v.Uuid] = Field(default_factory=list)
    # CurveZMQ between the interchange and its workers (Parsl HTEX `encrypted`). Off only
    # where nothing beyond this machine can reach the interchange (`address` loopback).
    encrypted: bool = True
    # Where the interchange listens and the workers connect (HTEX `address`): 127.0.0.1 where
    # the workers run on this machine. Unset: every interface (`tcp://*`), or the one named by
    # address_interface, the network the workers use (hsn0 on Slingshot). Read in the pinned
    # parsl 2026.10.26 (executors/high_throughput/interchange.py binds `interchange_address or
    # "*"`; https://parsl.readthedocs.io/en/stable/stubs/parsl.executors.HighThroughputExecutor
    # .html, checked 2026-12-07).
    address: str | None = None  # an IP address (checked below)
    address_interface: v.Word | None = None
    max_workers_per_node: int | None = Field(default=None, ge=1)
    # How a node's devices reach the training tasks (the one place this is chosen):
    #   per-device: one worker per device, pinned to it (Parsl's available_accelerators); a
    #     task trains on one device, and a node runs as many tasks at once as it has devices.
    #   per-node: one worker per node holding all its devices (and CPUs); a task starts one
    #     rank per device itself (torch's elastic_launch, the experiment's ranks_per_node).
    #   mpi: Globus Compute's GlobusMPIEngine; a task is ranks started by the site's srun /
    #     mpiexec across one or more nodes of the pilot job (the experiment's nodes and
    #     ranks_per_node), rank i bound to device i as the facility documents; the ranks run
    #     the image, the engine's one worker per pilot runs on the host (deploy.python_activate).
    tasks: Literal["per-device", "per-node", "mpi"] = "per-device"
    # CPU sets per device: "list:<device 0's CPUs>:<device 1's CPUs>..." (ids[i]'s CPUs), the
    # CPUs of worker i (per-device: Parsl's cpu_affinity) and of batch and MPI rank i; or one
    # of Parsl's "none", "block", ... (per-device workers only).
    cpu_affinity: str = "none"
    # Default of the endpoint's `worker_init` option (the user's own lines, after the site's).
    worker_init_default: v.Line = ""
    idle_heartbeats_soft: int = 10
    idle_heartbeats_hard: int = 5760

    @field_validator("address")
    @classmethod
    def _ip_address(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise ValueError(
                    f"{v!r} is not an IP address: give one, e.g. 127.0.0.1 (loopback)"
                ) from None
        return v

    def loopback_only(self) -> bool:
        """The interchange listens on a loopback address only."""
        return self.address is not None and ipaddress.ip_address(self.address).is_loopback

    @model_validator(mode="after")
    def _listener(self) -> Endpoint:
        if self.address is not None and self.address_interface is not None:
            raise FieldError(
                "endpoint.address",
                "set either address or address_interface: drop one",
            )
        if not self.encrypted and not self.loopback_only():
            where = self.address or self.address_interface or "every interface"
            raise FieldError(
                "endpoint.encrypted",
                f"an unencrypted interchange listening on {where} runs whatever anyone who "
                "reaches it sends: set encrypted to true, or address to 127.0.0.1 where the "
                "workers run on this machine",
            )
        return self

    @model_validator(mode="after")
    def _mode(self) -> Endpoint:
        if self.mode == "multi-user" and not self.identity_domain:
            raise ValueError(
                "a multi-user endpoint maps Globus identities to local accounts: "
                "set endpoint.identity_domain (e.g. anl.gov)"
            )
        return self

    def affinity_lists(self) -> list[list[int]] | None:
        """The CPUs of each worker when cpu_affinity is a `list:`, else None."""
        if not self.cpu_affinity.startswith("list:"):
            return None
        return [cpu_list(x) for x in self.cpu_affinity.split(":")[1:]]


class Standalone(StrictModel):
    """A relocatable CPython build (python-build-standalone's `install_only` tarball, whose
    top directory is `python/`), fetched by URL and refused unless its sha256 matches."""

    url: v.Url
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EndpointPython(StrictModel):
    """Where the login node's endpoint venv gets its interpreter (`crossfl deploy`'s `python`
    step): exactly one of a facility module (`module`, with `module_use`, then `command` on
    PATH), a checksum-pinned standalone CPython (`standalone`), or an interpreter already there
    (`path`). Its Python minor must be the version rule's (crossfl.deploy.endpoint_env)."""

    module: v.Module | None = None
    module_use: list[v.Path] = Field(default_factory=list)
    command: v.Path = "python3"  # what the module puts on PATH
    standalone: Standalone | None = None
    path: v.Path | None = None
    source: Source | None = None  # where the facility says what its modules provide
    note: str = ""

    @model_validator(mode="after")
    def _one(self) -> EndpointPython:
        given = [k for k in ("module", "standalone", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "name exactly one interpreter source: module (a facility module), standalone "
                "({url, sha256} of a python-build-standalone tarball) or path"
                + (f" (given: {', '.join(given)})" if given else "")
            )
        return self


class Purge(StrictModel):
    """A filesystem that deletes files not read or written for `days` (Orion: 90), where the
    site keeps its image and runs: `crossfl doctor` says how long each has left."""

    days: int = Field(ge=1)
    source: Source | None = None


class Deploy(StrictModel):
    host: v.Token | None = None
    user: v.Token | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    remote_root: v.Path = ""
    endpoint_name: v.Token = ""
    # A shell line on the login node that puts globus-compute-endpoint on PATH. Runs there
    # through stdin (never in a command line); a secret it exports (a client secret) is kept
    # out of output, and a rendered file holding it is 0600. Where `python` is set and this
    # is not, it is derived: the module (if any), then the venv.
    python_activate: v.Line | None = None
    # The endpoint's own environment, made by `crossfl deploy` (the `python` step): a venv at
    # `venv` (default ~/.crossfl/<site>/endpoint) on this interpreter, with the endpoint's
    # pinned packages (requirements/endpoint.txt at requirements/constraints.txt's versions).
    python: EndpointPython | None = None
    venv: v.Path | None = None
    data_dir: v.Path | None = None
    purge: Purge | None = None  # remote_root's filesystem purges files unused this long
    # The endpoint runs on one login node of a load-balanced host: deploy records it
    # (deploy/state/), and status, stop and the next deploy reach it from wherever the
    # connection lands with this line, followed by the host and `bash -l -s` (the script on
    # its stdin); default `ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o
    # ConnectTimeout=20` (crossfl.deploy.remote.HOP_SSH). Shell text: one line.
    login_hop: v.Line | None = None

    def activate_line(self) -> str | None:
        """python_activate, or the line that activates the venv `python` makes (each value
        quoted: crossfl.quoting.quote)."""
        if self.python_activate or self.python is None or not self.venv:
            return self.python_activate
        from crossfl.quoting import quote

        py = self.python
        lines = [f"module use {quote(u)}" for u in py.module_use]
        lines += [f"module load {quote(py.module)}"] if py.module else []
        return "; ".join([*lines, f"source {quote(self.venv + '/bin/activate')}"])


class Smoke(StrictModel):
    """The collective part of the smoke job (batch/smoke.sh, `crossfl doctor SITE --smoke`):
    `ranks_per_node` ranks on each of `nodes` nodes all-reduce and take one DDP step with the
    site's backend. Two nodes where the smoke job's queue takes them cheaply (10 minutes), so
    the inter-node path (NIC, plugin, network namespace) is proven, not only the node's."""

    nodes: int = Field(1, ge=1)
    ranks_per_node: int = Field(2, ge=1)
    mb: float = Field(64.0, gt=0)  # all-reduce size per rank
    note: str = ""


class Site(StrictModel):
    name: str
    description: str = ""
    docs: list[v.Url] = Field(default_factory=list)
    scheduler: str  # a name from crossfl.schedulers (slurm, pbs, local)
    account: v.Token | None = None
    # A rule the facility sets on account names (regex), e.g. Perlmutter GPU jobs: "_g$".
    account_pattern: str | None = None
    queue: v.Token | None = None  # the partition on Slurm
    qos: v.Token | None = None
    constraint: v.Word | None = None  # Slurm -C
    # Published limits per queue (PBS), partition or QOS (Slurm; see limits_by).
    queues: dict[str, Queue] = Field(default_factory=dict)
    limits_by: Literal["queue", "qos"] = "queue"
    # Published limits per QOS where `queues` holds partitions (Frontier: batch/extended
    # partitions, normal/debug QOS; both apply to a job).
    qos_limits: dict[str, Queue] = Field(default_factory=dict)
    walltime: str = "01:00:00"
    nodes_per_block: int = Field(default=1, ge=1)
    init_blocks: int = Field(default=0, ge=0)
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    # CPUs of one node as the scheduler counts them: PBS select ncpus; Slurm -c for the
    # pilot's one task per node (Frontier 56 cores after -S 8; Perlmutter 128 threads).
    cpus_per_node: int | None = Field(default=None, ge=1)
    select_options: v.Word = ""  # PBS select chunk extras, e.g. "system=polaris"
    accelerator: Accelerator = Field(default_factory=Accelerator)
    node: Node | None = None
    filesystems: list[v.Token] = Field(default_factory=list)
    allowed_filesystems: list[str] | None = None
    directives: list[v.Line] = Field(default_factory=list)
    modules: list[v.Module] = Field(default_factory=list)
    module_use: list[v.Path] = Field(default_factory=list)
    proxy: Proxy = Field(default_factory=Proxy)
    env: dict[v.Ident, v.Line] = Field(default_factory=dict)
    container: Container = Field(default_factory=Container)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    worker_init: list[v.Line] = Field(default_factory=list)
    endpoint: Endpoint = Field(default_factory=Endpoint)
    deploy: Deploy = Field(default_factory=Deploy)
    smoke: Smoke = Field(default_factory=Smoke)

    # `${VAR:?hint}` references left unset when loading: field -> (VAR, hint, file). The site
    # still loads and renders (with `<VAR>` in place); `require_set()` stops what needs them.
    _unset: dict[str, tuple[str, str, str]] = PrivateAttr(default_factory=dict)

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
            raise ValueError(
                f"unknown scheduler {v!r}: use one of {', '.join(sorted(schedulers.names()))}"
            )
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
            raise FieldError(
                "max_blocks",
                f"max_blocks {self.max_blocks} is below min_blocks "
                f"{self.min_blocks} or init_blocks {self.init_blocks}: raise it",
            )
        if not self.deploy.remote_root:
            self.deploy.remote_root = f"~/.crossfl/{self.name}"
        if not self.deploy.endpoint_name:
            self.deploy.endpoint_name = f"crossfl-{self.name}"
        if self.deploy.python is not None and not self.deploy.venv:
            self.deploy.venv = f"~/.crossfl/{self.name}/endpoint"
        if self.deploy.python is not None and not self.deploy.python_activate:
            self.deploy.python_activate = self.deploy.activate_line()
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

    def entries(self, queue: str | None, qos: str | None) -> list[tuple[str, str, Queue]]:
        """(word, name, entry) for each published entry a job with this queue and QOS meets."""
        out: list[tuple[str, str, Queue]] = []
        if self.limits_by == "queue":
            if queue is not None and queue in self.queues:
                out.append((self.sched.queue_word, queue, self.queues[queue]))
            if qos is not None and qos in self.qos_limits:
                out.append(("qos", qos, self.qos_limits[qos]))
        elif qos is not None and qos in self.queues:
            out.append(("qos", qos, self.queues[qos]))
        return out

    def node_part(self) -> Part | None:
        """What one pilot job gets when the site's entries give it part of a node."""
        for _, _, entry in self.entries(self.queue, self.qos):
            if entry.part is not None:
                return entry.part
        return None

    def workers_per_node(self) -> int:
        """How many workers Parsl's pool starts per node. per-device: one per accelerator id
        (at most max_workers_per_node), one per device of a node's part, else
        max_workers_per_node; per-node: one; mpi: one per pilot job (on its first node)."""
        if self.endpoint.tasks != "per-device":
            return 1
        acc = self.accelerator
        part = self.node_part()
        if part is not None:
            return part.devices
        n = self.endpoint.max_workers_per_node or max(acc.devices_per_node, 1)
        return min(n, acc.devices_per_node) if acc.devices_per_node else n

    def devices_per_node(self) -> int:
        """The devices one pilot job holds on a node: the node's, or its part's."""
        part = self.node_part()
        return part.devices if part is not None else self.accelerator.devices_per_node

    def ranks_per_node(self) -> int:
        """The most training ranks a node runs: one per device it holds; on a node without
        accelerators, one per worker (CPU ranks: any number, the experiment's choice)."""
        return self.devices_per_node() or self.workers_per_node()

    @property
    def local_rank_env(self) -> str | None:
        return self.launcher.local_rank_env or self.sched.local_rank_env

    @property
    def expect_device(self) -> Literal["cuda", "rocm", "xpu", "cpu"] | None:
        """What the client must find: the catalog's accelerator (never silently the CPU);
        "cpu" where the site has none; None for stand-in devices."""
        acc = self.accelerator
        if acc.simulated:
            return None
        return "cpu" if acc.vendor == "none" else acc.vendor

    @property
    def arch(self) -> Arch:
        return image_arch(self)

    def image(self) -> str | None:
        """The image (Apptainer: a path; podman-hpc: a name) for this site's architecture,
        placeholders filled."""
        if self.container.runtime == "none":
            return None
        return self.fill(self.container.images[image_arch(self)])

    def with_image(self, ref: str) -> Site:
        """This site with `ref` as its architecture's image (a podman-hpc image ID)."""
        copy = self.model_copy(deep=True)
        copy.container.images[image_arch(self)] = ref
        return copy

    def fill(self, text: str) -> str:
        return (
            text.replace("{{remote_root}}", home_path(self.deploy.remote_root))
            .replace("{{site}}", self.name)
            .replace("{{project_root}}", str(paths.project_root()))
        )

    def require_set(self, *fields: str) -> None:
        """Stop with one line when a `${VAR:?}` these fields need (all, if none named) was not
        set when the site was loaded."""
        for field, (var, hint, file) in self._unset.items():
            if fields and not any(field == f or field.startswith(f + ".") for f in fields):
                continue
            raise UserError(
                f"needs ${{{var}}}, which is not set (site {self.name})",
                file=file,
                field=field,
                fix=f"export {var}=<{hint or 'value'}>, or set {field} in "
                f"deploy/sites/overrides/{self.name}.yaml",
            )


def image_arch(site: Site) -> Arch:
    """The image architecture the site's accelerator needs: cuda, rocm, xpu or cpu."""
    vendor = site.accelerator.vendor
    return "cpu" if vendor == "none" else vendor
