"""The records of a run's metrics.jsonl, one typed model per kind.

The drivers build these, ``telemetry.MetricsLog`` writes them (one JSON line each, fields left
unset are left out), and every reader (report, resume, benchmarks) reads them back through
``telemetry.live_records`` as the same models.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from crossfl.schema import StrictModel

TaskStatus = Literal["ok", "failed", "rejected", "late"]


class Record(StrictModel):
    """What every kind of record shares: unknown fields are errors."""


class TaskRecord(Record):
    """One client training task: when it went, how it came back, where its time went."""

    kind: Literal["task"] = "task"
    round: int  # sync: the round; async: the task's number
    site: str
    status: TaskStatus
    submitted_at: float
    received_at: float
    submitted_rel_s: float
    bytes_down: int
    transport: str
    attempts: int
    base_version: int
    local_steps: int
    nodes: int = 1
    node_hours: float = 0.0
    node_hours_basis: str | None = None
    error: str | None = None
    reason: str | None = None
    retried_errors: list[str] | None = None
    # what a finished task reported
    train_loss: float | None = None
    first_loss: float | None = None
    num_samples: int | None = None
    steps: int | None = None
    load_s: float | None = None
    train_s: float | None = None
    serialize_s: float | None = None
    queue_s: float | None = None  # (last) submit -> the function began on a worker
    worker_s: float | None = None
    transfer_s: float | None = None  # the worker finished -> the server holds the result
    task_wall_s: float | None = None
    cache_hit: bool | None = None
    device: str | None = None
    host: str | None = None
    pid: int | None = None
    python: str | None = None  # the interpreter that ran it (an image's, or the site's venv)
    bytes_up: int | None = None
    transport_up: str | None = None
    # screening, lateness, staleness, parking
    distance: float | None = None
    late: bool | None = None
    arrived_in_round: int | None = None
    staleness: int | None = None
    arrived_version: int | None = None
    parked_until_round: int | None = None


class AggregationRecord(Record):
    kind: Literal["aggregation"] = "aggregation"
    round: int
    version: int
    driver: str
    sites: list[str]
    elapsed_s: float
    staleness: dict[str, int]
    updates: int | None = None  # async: accepted updates so far


class EvalRecord(Record):
    """The untrained adapter's evaluation (``baseline``) or a global version's (``round``)."""

    kind: Literal["baseline", "round"]
    round: int
    val_loss: float
    exact_match: dict[str, float] = Field(default_factory=dict)
    num_samples: int | None = None
    elapsed_s: float
    strategy: str
    version: int
    updates: int
    bytes_down: int
    transport: str
    driver: str


class SkippedRecord(Record):
    kind: Literal["skipped"] = "skipped"
    round: int
    site: str
    reason: str
    at_rel_s: float


class ResumeRecord(Record):
    """A resumed run: records after ``metrics_bytes`` that came before this one no longer count."""

    kind: Literal["resume"] = "resume"
    round: int
    version: int
    metrics_bytes: int
    at: float
    elapsed_s: float


AnyRecord = Annotated[Union[TaskRecord, AggregationRecord, EvalRecord, SkippedRecord, ResumeRecord],
                      Field(discriminator="kind")]
RECORD = TypeAdapter(AnyRecord)
