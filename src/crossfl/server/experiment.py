"""The experiment file: which model, data, sites, strategy and rounds. One pydantic schema;
every mistake becomes one `UserError` naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from crossfl.client.contract import LoraSpec
from crossfl.errors import UserError
from crossfl.paths import experiments_dir, project_root
from crossfl.schema import FieldError, user_error
from crossfl.schema import StrictModel as Strict
from crossfl.yamlio import load_mapping


class ModelSettings(Strict):
    path: str = Field(
        description="base model directory, loaded with from_pretrained(path) at each site"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class PartitionSettings(Strict):
    scheme: Literal["iid", "by_task", "dirichlet"] = "by_task"
    seed: int = 0
    alpha: float = Field(0.5, gt=0)


class DataSettings(Strict):
    train: str | None = Field(
        None, description="training JSONL the server partitions for sites without data_path"
    )
    validation: str = Field(description="validation JSONL, read where evaluation runs")
    partition: PartitionSettings = PartitionSettings()


ShardMode = Literal["auto", "never", "always"]
"""FSDP2-shard the frozen base model across a task's ranks (crossfl.client.sharding); auto:
when it takes more than half of one rank's device memory."""


class SiteTraining(Strict):
    """Per-site overrides of `training` (e.g. a slower site doing more local steps)."""

    local_steps: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    max_samples: int | None = Field(None, ge=1)
    shard: ShardMode | None = None


TransportMode = Literal["auto", "inline", "shared_fs", "globus_transfer"]


class GlobusCollection(Strict):
    """A Globus collection and the directory in it that crossfl may use."""

    collection: str = Field(pattern=r"^[0-9a-fA-F-]{36}$", description="collection UUID")
    path: str = Field(min_length=1, description="directory on the collection (collection path)")
    local_path: str | None = Field(
        None, description="the same directory as the worker or server sees it (default: path)"
    )


class SiteTransport(Strict):
    """Per-site transport: overrides of the experiment's, plus where the site's files live."""

    mode: TransportMode | None = None
    inline_limit_mb: float | None = Field(None, gt=0, le=7.5)
    shared_dir: str | None = Field(
        None,
        description="a directory both server and site workers read "
        "(default for local sites: <run>/transport)",
    )
    globus: GlobusCollection | None = None


class SiteEntry(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    site: str = Field(description="catalog name in deploy/sites/")
    data_path: str | None = Field(None, description="site-local training JSONL (at the facility)")
    model_path: str | None = Field(
        None, description="the base model on this site's filesystem (default: model.path)"
    )
    user_options: dict[str, Any] = Field(default_factory=dict)
    num_samples: int | None = Field(
        None,
        ge=1,
        description="the site's training-set size, where the server cannot count it (its own "
        "data at a facility): no update of the site weighs more samples than this",
    )
    training: SiteTraining = SiteTraining()
    transport: SiteTransport = SiteTransport()
    nodes: int | None = Field(
        None,
        ge=1,
        description="nodes one training task runs on: more than 1 through the MPI "
        "engine (endpoint.tasks: mpi); default 1, or the mpi site's nodes_per_block",
    )
    ranks_per_node: int | Literal["auto"] | None = Field(
        None,
        description="training ranks per node, one per device (default: every device of "
        "the node; a CPU site 1); checked against the site (crossfl.sites.check_request)",
    )

    @field_validator("ranks_per_node")
    @classmethod
    def _ranks(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1: give the ranks per node, or auto")
        return v


class StrategySettings(Strict):
    name: str = "fedavg"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DispatchSettings(Strict):
    """Who works how much, and when (crossfl.server.dispatch): ``eager`` as the strategy
    plans and the engine releases; ``queue-aware`` (ours) keeps or releases pilots by cost,
    asks for the next pilot before the current one ends, fits tasks and pilot shapes to the
    walltime, and weighs updates by staleness and participation."""

    name: Literal["eager", "queue-aware"] = "eager"
    warm_if_wait_over_s: float = Field(
        600,
        ge=0,
        description="the idle gap assumed before one is measured: a pilot is kept warm when "
        "a new one's expected wait times the other sites' nodes exceeds its nodes times this",
    )
    prior_wait_s: float = Field(
        900,
        gt=0,
        description="a new pilot's expected queue wait before any is observed (a site's "
        "expected_wait_s wins); then learned from the waits its pilots had",
    )
    fit_walltime: bool = Field(
        True, description="size each task's local steps to the walltime left in its pilot"
    )
    fit_shape: bool = Field(
        True,
        description="choose the pilots' walltime among the queue's bins: the shortest "
        "that holds pilot_tasks tasks",
    )
    pilot_tasks: int = Field(4, ge=1, description="tasks a pilot's walltime should hold")
    prior_task_s: float = Field(
        600,
        gt=0,
        description="a task's expected length before one is measured (the first pilots' "
        "walltime is chosen for pilot_tasks of them)",
    )
    next_pilot: bool = Field(
        True,
        description="ask for a site's next pilot before its current one ends, and drain a "
        "pilot a task's length before its walltime",
    )
    weighting: bool = Field(
        True, description="weigh updates by staleness and by the site's participation"
    )
    walltime_margin_s: float = Field(
        120, ge=0, description="a task must end this long before its pilot's walltime"
    )
    expected_wait_s: dict[str, float] = Field(
        default_factory=dict,
        description="per site, a new pilot's expected queue wait before any is observed",
    )


class TrainingSettings(Strict):
    local_steps: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(128, ge=8)
    adapter_dtype: Literal["float32", "bfloat16"] = "float32"
    torch_threads: int | None = Field(None, ge=1)
    max_samples: int | None = Field(None, ge=1)
    shard: ShardMode = "auto"


class EvaluationSettings(Strict):
    site: str | None = Field(None, description="site entry that evaluates (default: the first)")
    max_samples: int | None = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    generate_max_new_tokens: int = Field(24, ge=1)
    generate_samples: int = Field(
        32, ge=0, description="examples answered by generation for exact match (0: loss only)"
    )


class TransportSettings(Strict):
    """How adapters travel: inside the task up to inline_limit_mb, else by reference."""

    mode: TransportMode = "auto"
    inline_limit_mb: float = Field(
        7.0,
        gt=0,
        le=7.5,
        description="Globus Compute results are capped at 10 MiB after serialization",
    )
    globus: GlobusCollection | None = Field(
        None, description="the server's own collection (globus_transfer)"
    )
    transfer_timeout_s: float = Field(3600, gt=0)


class FaultSettings(Strict):
    retries: int = Field(
        2,
        ge=0,
        description="resubmissions after a system failure (lost worker/manager, "
        "connection error); user errors are never retried",
    )
    backoff_s: float = Field(2.0, ge=0)
    backoff_max_s: float = Field(120.0, ge=0)
    park_after: int = Field(3, ge=1, description="consecutive failed tasks before a site is parked")
    park_rounds: int = Field(
        2, ge=1, description="rounds (aggregations when async) a parked site sits out"
    )


class QuorumSettings(Strict):
    min_clients: int | None = Field(
        None,
        ge=1,
        description="aggregate once this many updates arrived "
        "and the deadline passed (default: all sites)",
    )
    deadline_s: float | None = Field(
        None,
        gt=0,
        description="round deadline (default for fedqueue: its "
        "round timeout); late updates are recorded",
    )
    late_updates: Literal["auto", "next_round", "drop"] = Field(
        "auto",
        description="what a late update does: merged into the next round's aggregation "
        "(auto: for strategies that discount staleness, fedqueue) or only recorded",
    )


class UpdateChecks(Strict):
    max_distance_factor: float | None = Field(
        10.0,
        gt=1,
        description="reject an update further from the global than this x the median distance",
    )
    min_updates_for_distance: int = Field(3, ge=2)
    max_relative_distance: float | None = Field(
        10.0,
        gt=0,
        description="reject an update (from the first one on), or a new global, further from "
        "the current global than this x the global's L2 norm (null: no bound)",
    )


class Experiment(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSettings
    data: DataSettings
    sites: list[SiteEntry] = Field(min_length=1)
    strategy: StrategySettings = StrategySettings()
    rounds: int = Field(5, ge=1)
    training: TrainingSettings = TrainingSettings()
    lora: LoraSpec = LoraSpec()  # the contract's own type: the task carries it as it is
    evaluation: EvaluationSettings = EvaluationSettings()
    task_timeout_s: float = Field(1800, gt=0)
    dispatch: DispatchSettings = DispatchSettings()
    stop_at_loss: float | None = Field(
        None,
        gt=0,
        description="end the run at the first evaluation at or under this "
        "validation loss (e.g. a time-to-target comparison)",
    )
    seed: int = 0
    driver: Literal["auto", "sync", "async"] = Field(
        "auto", description="auto: async when the strategy is asynchronous"
    )
    max_updates: int | None = Field(
        None,
        ge=1,
        description="async: stop after this many client updates "
        "(default: when `rounds` versions exist)",
    )
    evaluate_every: int = Field(1, ge=1, description="evaluate after every k-th aggregation")
    faults: FaultSettings = FaultSettings()
    quorum: QuorumSettings = QuorumSettings()
    update_checks: UpdateChecks = UpdateChecks()
    transport: TransportSettings = TransportSettings()
    keep_checkpoints: int = Field(
        3, ge=1, description="checkpoint generations kept (`crossfl resume RUN --from-round N`)"
    )

    @field_validator("sites")
    @classmethod
    def _unique_names(cls, sites: list[SiteEntry]) -> list[SiteEntry]:
        names = [s.name for s in sites]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"site names must be unique ({', '.join(dupes)} repeated): rename one")
        return sites

    @model_validator(mode="after")
    def _check_refs(self) -> Experiment:
        names = [s.name for s in self.sites]
        if self.evaluation.site is not None and self.evaluation.site not in names:
            raise FieldError(
                "evaluation.site",
                f"{self.evaluation.site!r} is not one of the sites: use one of {', '.join(names)}",
            )
        if self.data.train is None and any(s.data_path is None for s in self.sites):
            raise FieldError(
                "data.train",
                "required when a site has no data_path: set it, or give every site a data_path",
            )
        if self.quorum.min_clients is not None and self.quorum.min_clients > len(self.sites):
            raise FieldError(
                "quorum.min_clients",
                f"{self.quorum.min_clients} but there are only {len(self.sites)} sites: lower it",
            )
        for s in self.sites:
            if self.transport_mode(s) == "globus_transfer" and (
                self.transport.globus is None or s.transport.globus is None
            ):
                raise FieldError(
                    f"sites[{s.name}].transport.globus",
                    "globus_transfer needs both collections: set transport.globus "
                    f"(the server's) and sites[{s.name}].transport.globus (the site's)",
                )
        return self

    def transport_mode(self, site: SiteEntry) -> str:
        return site.transport.mode or self.transport.mode

    def inline_limit_bytes(self, site: SiteEntry) -> int:
        return int((site.transport.inline_limit_mb or self.transport.inline_limit_mb) * 1e6)

    def site_entry(self, name: str) -> SiteEntry:
        return next(s for s in self.sites if s.name == name)

    @property
    def eval_site(self) -> str:
        return self.evaluation.site or self.sites[0].name


def with_changes(
    experiment: Experiment, source: Path | str | None = None, **changes: Any
) -> Experiment:
    """A copy of ``experiment`` with ``changes`` (fields or models), validated like a file:
    a bad value is the same UserError (``model_copy(update=...)`` would skip every check)."""
    raw = experiment.model_dump()
    for key, value in changes.items():
        raw[key] = value.model_dump() if hasattr(value, "model_dump") else value
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, Path(source or experiment.name), raw) from None


def resolve_experiment_path(ref: str | Path) -> Path:
    """A path (from here, or from the project root), or a bare name looked up in
    deploy/experiments/."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (
        project_root() / path,
        experiments_dir() / f"{ref}.yaml",
        experiments_dir() / str(ref),
    ):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in experiments_dir().glob("*.yaml"))
    raise UserError(
        f"no experiment file {str(ref)!r}",
        file=str(ref),
        fix=f"give a path or one of: {', '.join(known) or '(none in deploy/experiments/)'}",
    )


EXAMPLE = "deploy/experiments/local-demo.yaml"


def validation_error(exc: ValidationError, file: Path, raw: Any) -> UserError:
    """The first bad field of an experiment file as one UserError (the others are counted)."""
    return user_error(exc, file=file, raw=raw, schema=EXAMPLE)


def load_experiment(ref: str | Path) -> tuple[Experiment, Path]:
    path = resolve_experiment_path(ref)
    raw = load_mapping(path, fix=f"see {EXAMPLE}")
    try:
        return Experiment.model_validate(raw), path
    except ValidationError as exc:
        raise validation_error(exc, path, raw) from None


def local_path(value: str) -> Path:
    """A path on this machine, relative to the project root."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root() / path
