"""The facility catalog: one pydantic schema for `deploy/sites/*.yaml`.

A site file holds facts about a facility. What differs per user (account, paths) comes from an
overrides file (`deploy/sites/overrides/<site>.yaml`, or `$CROSSFL_SITE_OVERRIDES/<site>.yaml`),
deep-merged over the catalog entry, and from `${VAR}` / `${VAR:-default}` references that are
expanded from the environment when the file is loaded. A bare `$VAR` is left alone: it belongs to
the shell on the facility (e.g. `$HOME`, `$PBS_NODEFILE`).

Every mistake becomes one `UserError` naming the file, the field and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from crossfl import paths
from crossfl.errors import UserError
from crossfl.schema import FieldError, StrictModel, field_path, problems
from crossfl.yamlio import load_mapping

Scheduler = Literal["slurm", "pbs", "local"]
Vendor = Literal["cuda", "rocm", "xpu", "none"]
Arch = Literal["cuda", "rocm", "xpu", "cpu"]

_WALLTIME = re.compile(r"^(\d{1,3}):([0-5]\d):([0-5]\d)$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# The environment variable each vendor's runtime reads to pick a device.
VISIBLE_DEVICES_ENV: dict[str, str] = {
    "cuda": "CUDA_VISIBLE_DEVICES",
    "rocm": "ROCR_VISIBLE_DEVICES",
    "xpu": "ZE_AFFINITY_MASK",
}

# Scheduler options a directive may use. Anything else is refused at load time: a typo in a
# directive otherwise surfaces only as a rejected job at the facility.
SLURM_OPTIONS = frozenset({
    "-A", "--account", "-p", "--partition", "-q", "--qos", "-t", "--time", "-N", "--nodes",
    "-n", "--ntasks", "--ntasks-per-node", "-c", "--cpus-per-task", "-C", "--constraint",
    "-G", "--gpus", "--gpus-per-node", "--gpus-per-task", "--gpu-bind", "--gres",
    "--gres-flags", "--exclusive", "--mem", "--mem-per-cpu", "--mem-per-gpu", "-J",
    "--job-name", "-o", "--output", "-e", "--error", "--network", "-S", "--core-spec",
    "--threads-per-core", "--hint", "--signal", "--mail-type", "--mail-user", "--licenses",
    "-L", "--reservation", "--exclude", "-x", "--nodelist", "-w", "--requeue", "--no-requeue",
    "--switches", "--time-min", "--cpu-freq", "--comment", "--export", "--get-user-env",
    "--image", "--module", "--volume",  # Shifter (NERSC) adds these to sbatch
})
PBS_OPTIONS = frozenset({
    "-A", "-N", "-q", "-l", "-k", "-j", "-o", "-e", "-m", "-M", "-W", "-V", "-v", "-r",
    "-p", "-a", "-c", "-S", "-J", "-P", "-h", "-u",
})
PBS_RESOURCES = frozenset({
    "select", "walltime", "filesystems", "place", "singularity_fakeroot", "ncpus", "ngpus",
    "mem", "nodes", "debug", "daos", "mpiprocs", "ompthreads", "system", "host",
})


def parse_walltime(text: str) -> int:
    """'HH:MM:SS' -> seconds; ValueError with the accepted form otherwise."""
    m = _WALLTIME.match(text.strip())
    if not m:
        raise ValueError(f"walltime {text!r} is not HH:MM:SS: write it like 01:00:00")
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


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
        return list(self.ids) if self.ids is not None else [str(i) for i in range(self.devices_per_node)]

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


class Container(StrictModel):
    runtime: Literal["apptainer", "none"] = "none"
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
    scheduler: Scheduler
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
        self._check_scheduler()
        self._check_account()
        self._check_limits()
        self._check_container()
        return self

    def _check_scheduler(self) -> None:
        if self.scheduler == "local":
            if self.launcher.type != "single":
                raise FieldError("launcher.type", "a local site runs one process per node: "
                                  "use launcher.type: single")
            if self.directives or self.filesystems:
                raise FieldError("directives", "a local site has no scheduler directives: "
                                  "remove directives and filesystems")
        if self.scheduler == "pbs" and self.launcher.type == "srun":
            raise FieldError("launcher.type", "srun needs Slurm: use mpiexec on a PBS site")
        if self.accelerator.bind == "scheduler" and self.scheduler == "pbs":
            raise FieldError("accelerator.bind", "PBS/PALS mpiexec does not bind GPUs: use "
                              "bind: local-rank")
        if self.filesystems and self.scheduler != "pbs":
            raise FieldError("filesystems", "filesystems is a PBS request (-l filesystems=): "
                              "remove it for a Slurm site")
        if self.allowed_filesystems is not None:
            bad = [f for f in self.filesystems if f not in self.allowed_filesystems]
            if bad:
                raise FieldError("filesystems", f"{bad} not offered at this facility: "
                                  f"choose from {self.allowed_filesystems}")
        for i, d in enumerate(self.directives):
            problem = directive_problem(self.scheduler, d)
            if problem:
                raise FieldError(f"directives[{i}]", problem)

    def _check_account(self) -> None:
        if not self.account_pattern:
            return
        try:
            rule = re.compile(self.account_pattern)
        except re.error as exc:
            raise FieldError("account_pattern", f"not a regular expression ({exc}): "
                              "fix the pattern") from None
        if self.account and not rule.search(self.account):
            raise FieldError("account", f"account {self.account!r} does not match this "
                              f"facility's rule {self.account_pattern!r}: use the account "
                              "of the right allocation")

    def _check_limits(self) -> None:
        if self.limits_by == "qos" and self.scheduler != "slurm":
            raise FieldError("limits_by", "QOS limits exist on Slurm only: use limits_by: queue")
        key = self.limited_by()
        if self.queues and key is not None and key not in self.queues:
            raise FieldError(self.limits_by, f"{self.limits_by} {key!r} is not one of "
                              f"{sorted(self.queues)}: pick one or add it under queues")
        limit = self.queue_limit()
        if limit is None:
            return
        if limit.max_walltime and parse_walltime(self.walltime) > parse_walltime(limit.max_walltime):
            raise FieldError("walltime", f"walltime {self.walltime} is over the {key} "
                              f"{self.limits_by}'s maximum {limit.max_walltime}: lower it or "
                              f"pick another {self.limits_by}")
        if limit.max_nodes and self.nodes_per_block > limit.max_nodes:
            raise FieldError("nodes_per_block", f"{self.nodes_per_block} nodes is over the "
                              f"{key} {self.limits_by}'s maximum {limit.max_nodes}: lower it "
                              f"or pick another {self.limits_by}")

    def _check_container(self) -> None:
        if self.container.runtime == "none":
            return
        arch = image_arch(self)
        if arch not in self.container.images:
            raise FieldError(f"container.images.{arch}",
                              f"no image for this site's architecture {arch!r} "
                              f"(accelerator.vendor {self.accelerator.vendor!r}): add "
                              f"container.images.{arch}, e.g. \"{{{{remote_root}}}}/images/"
                              f"crossfl-{arch}.sif\"")

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


def directive_problem(scheduler: str, directive: str) -> str | None:
    """Why a scheduler directive would be refused, or None. Directives are written without the
    `#SBATCH`/`#PBS` prefix, e.g. "-q debug", "--network=disable_rdzv_get", "-l place=scatter"."""
    words = directive.split()
    if not words:
        return "empty directive"
    opt = words[0].split("=", 1)[0]
    if scheduler == "slurm":
        if opt not in SLURM_OPTIONS:
            return f"sbatch has no option {opt!r}: check `man sbatch` (e.g. --qos, --constraint)"
        return None
    if scheduler == "pbs":
        if opt not in PBS_OPTIONS:
            return f"qsub has no option {opt!r}: check `man qsub` (e.g. -l, -k, -q)"
        if opt == "-l":
            if len(words) < 2:
                return "-l needs a resource, e.g. -l place=scatter"
            for part in words[1].split(","):
                res = part.split("=", 1)[0].split(":", 1)[0]
                if res not in PBS_RESOURCES:
                    return f"PBS resource {res!r} is unknown: one of {sorted(PBS_RESOURCES)}"
        return None
    return "a local site has no scheduler directives"


def lint_script(site: Site, text: str) -> list[str]:
    """Problems with the `#SBATCH` / `#PBS` directives of a rendered job script, by the site's
    rules: options the scheduler knows, PBS filesystems the facility offers, the walltime
    format and the queue's limit. Empty when the script is clean."""
    prefix = {"slurm": "#SBATCH", "pbs": "#PBS"}.get(site.scheduler)
    if prefix is None:
        return []
    problems: list[str] = []
    other = "#PBS" if prefix == "#SBATCH" else "#SBATCH"
    limit = site.queue_limit()
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(other + " "):
            problems.append(f"line {n}: {other} directive in a {site.scheduler} script")
            continue
        if not line.startswith(prefix + " "):
            continue
        directive = line[len(prefix):].strip()
        problem = directive_problem(site.scheduler, directive)
        if problem:
            problems.append(f"line {n}: {problem}")
            continue
        words = directive.replace("=", " ", 1).split() if prefix == "#SBATCH" else directive.split()
        if prefix == "#PBS" and words[0] == "-l":
            for part in words[1].split(","):
                res, _, value = part.partition("=")
                if res == "filesystems" and site.allowed_filesystems is not None:
                    bad = [f for f in value.split(":") if f not in site.allowed_filesystems]
                    if bad:
                        problems.append(f"line {n}: filesystems {bad} not offered; "
                                        f"choose from {site.allowed_filesystems}")
                if res == "walltime":
                    problems += _walltime_problem(n, value, limit)
        if prefix == "#SBATCH" and words[0] in ("-t", "--time") and len(words) > 1:
            problems += _walltime_problem(n, words[1], limit, slurm=True)
    return problems


_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_slurm_time(text: str) -> int:
    """Seconds of a Slurm --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _SLURM_TIME.match(text.strip())
    if not m:
        raise ValueError(f"time {text!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    if days is not None:
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if b is None:
        return int(a) * 60
    if c is None:
        return int(a) * 60 + int(b)
    return int(a) * 3600 + int(b) * 60 + int(c)


def _walltime_problem(n: int, value: str, limit: Queue | None, slurm: bool = False) -> list[str]:
    try:
        secs = parse_slurm_time(value) if slurm else parse_walltime(value)
    except ValueError as exc:
        return [f"line {n}: {exc}"]
    if limit and limit.max_walltime and secs > parse_walltime(limit.max_walltime):
        return [f"line {n}: walltime {value} over the queue maximum {limit.max_walltime}"]
    return []


def image_arch(site: Site) -> str:
    """The image architecture the site's accelerator needs: cuda, rocm, xpu or cpu."""
    vendor = site.accelerator.vendor
    return "cpu" if vendor == "none" else vendor


# ---------------------------------------------------------------------------------------------
# Loading

def list_sites() -> list[str]:
    d = paths.sites_dir()
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml") if not p.name.startswith("."))


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        if not p.is_file():
            raise UserError("site file not found", file=p,
                            fix="check the path, or give a site name from `crossfl sites`")
        return p
    f = paths.sites_dir() / f"{name_or_path}.yaml"
    if not f.is_file():
        known = ", ".join(list_sites()) or "none"
        raise UserError(f"unknown site {str(name_or_path)!r}", file=f,
                        fix=f"use one of: {known}, or add deploy/sites/{name_or_path}.yaml")
    return f


Loc = tuple[str | int, ...]


class _Origins:
    """Which file each merged value came from: the catalog entry, unless an overrides file
    set the key (or a key above it)."""

    def __init__(self, catalog: Path) -> None:
        self.catalog = catalog
        self.set_by: dict[Loc, Path] = {}

    def merge(self, base: dict[str, Any], over: dict[str, Any], file: Path,
              at: Loc = ()) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = self.merge(out[k], v, file, (*at, k))
            else:
                out[k] = v
                self.set_by[(*at, k)] = file
        return out

    def file_of(self, loc: Loc) -> Path:
        """The file a value (or a block, for a check over several of its fields) came from."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.set_by:
                return self.set_by[loc[:n]]
        below = [f for key, f in self.set_by.items() if loc and key[:len(loc)] == loc]
        return below[0] if below else self.catalog


def _parse_loc(field: str) -> Loc:
    """"container.images.cuda" / "directives[1]" -> ("container", "images", "cuda") / (.., 1)."""
    return tuple(int(part[1:-1]) if part.startswith("[") else part
                 for part in re.findall(r"\[\d+\]|[^.\[\]]+", field))


def _expand(value: Any, origins: _Origins, loc: Loc = ()) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, origins, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, origins, (*loc, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        where = field_path(loc)
        raise UserError(f"${{{var}}} is not set", file=origins.file_of(loc), field=where,
                        fix=f"export {var}=..., or set {where} in the site's overrides file")
    return _ENV_REF.sub(sub, value)


def overrides_path(name: str) -> Path | None:
    """The user's overrides for a site: $CROSSFL_SITE_OVERRIDES/<name>.yaml (a directory), or
    $CROSSFL_SITE_OVERRIDES itself when it names a file, else deploy/sites/overrides/<name>.yaml."""
    env = os.environ.get("CROSSFL_SITE_OVERRIDES")
    if env:
        p = Path(env)
        cand = p if p.suffix in (".yaml", ".yml") else p / f"{name}.yaml"
        return cand if cand.is_file() else None
    cand = paths.sites_dir() / "overrides" / f"{name}.yaml"
    return cand if cand.is_file() else None


_GENERIC_FIX = "see the comment at the top of the site file and the schema in src/crossfl/sites.py"


def _errors(exc: ValidationError, origins: _Origins, overrides: Path | None) -> UserError:
    """One UserError naming, for each bad value, the file it came from."""
    found = [(p.field, p.message, p.fix or _GENERIC_FIX)
             for p in problems(exc, schema="src/crossfl/sites.py")]
    files = [origins.file_of(_parse_loc(field)) for field, _, _ in found]
    if len(found) == 1:
        (field, msg, fix), file = found[0], files[0]
        if overrides is not None and file != overrides:
            msg += f" (with overrides from {overrides})"
        return UserError(msg, file=file, field=field or None, fix=fix)
    main = files[0] if len(set(files)) == 1 else origins.catalog
    lines = [f"{field or '(top level)'}: {msg}" + ("" if fix == _GENERIC_FIX else f" (fix: {fix})")
             + ("" if file == main else f" (in {file})")
             for (field, msg, fix), file in zip(found, files)]
    return UserError("invalid site:\n  " + "\n  ".join(lines), file=main,
                     fix="correct each field listed")


def load_site(name_or_path: str | Path, overrides: Path | None = None) -> Site:
    """Read a catalog entry, merge the user's overrides, expand ${VAR}s and validate. A bad
    value is reported against the file it came from (the catalog entry or the overrides)."""
    path = _resolve(name_or_path)
    data = load_mapping(path)
    data.setdefault("name", path.stem)
    ov = overrides if overrides is not None else overrides_path(str(data["name"]))
    origins = _Origins(path)
    if ov is not None:
        ov = Path(ov)
        if not ov.is_file():
            raise UserError("overrides file not found", file=ov, fix="check the path")
        data = origins.merge(data, load_mapping(ov), ov)
    data = _expand(data, origins)
    try:
        return Site.model_validate(data)
    except ValidationError as exc:
        raise _errors(exc, origins, ov) from None
