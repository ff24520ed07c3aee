"""The records of a run's metrics.jsonl, one typed model per kind.

The drivers build these, ``telemetry.MetricsLog`` writes them (one JSON line each, fields left
unset are left out), and every reader (report, resume, benchmarks) reads them back through
``telemetry.live_records`` as the same models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from crossfl.schema import StrictModel

if TYPE_CHECKING:
    from crossfl.client.contract import TrainResult

TaskStatus = Literal["ok", "failed", "rejected", "late"]


class MetricsRecord(StrictModel):
    """What every kind of record shares: unknown fields are errors."""


class TaskRecord(MetricsRecord):
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
    nodes: int = 1  # nodes the site's pilot job held for the task: what is charged
    node_hours: float = 0.0
    node_hours_basis: str | None = None
    # how the task used them (``account``; crossfl.client.telemetry defines the fields)
    ranks: int | None = None
    nodes_used: int | None = None  # distinct hosts among the ranks
    devices_per_rank: int | None = None
    device_type: str | None = None
    device_names: list[str] | None = None
    dist_backend: str | None = None
    sharded: bool | None = None
    accelerator_s: float | None = None  # sum over ranks of device-seconds in training steps
    train_window_s: float | None = None  # the training loop's wall (the slowest rank's)
    devices_held: int | None = None  # the held nodes' devices (a CPU site: the ranks)
    device_busy: float | None = None  # accelerator_s / (devices_held x train_window_s)
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
    weighed_samples: int | None = None  # num_samples bounded by the site's known size, if less
    distance: float | None = None
    late: bool | None = None
    arrived_in_round: int | None = None
    staleness: int | None = None
    arrived_version: int | None = None
    parked_until_round: int | None = None
    # a replay (crossfl simulate): the pilot that ran the task and what was simulated
    simulated: dict[str, Any] | None = None


def account(
    record: TaskRecord,
    result: TrainResult | None,
    *,
    held_nodes: int,
    devices_per_node: int,
    local: bool,
) -> None:
    """Charge a finished task for what its site held, and say how busy it kept it.

    node-hours = nodes held x the task's wall (``TrainResult.wall_s``: from the task's start on
    its worker, or from the launch line of an MPI task, to its result; a failed task, with no
    result, is charged nothing here: its pilot's time is not visible from the server).
    device-busy = device-seconds in training steps / (devices held x the training loop's wall),
    where the devices held are the held nodes' devices, or on a site without accelerators the
    ranks (crossfl.client.telemetry: the measure bench and gpu-check print too). A result
    without a training window (older clients) is measured over its wall."""
    record.nodes = held_nodes
    if result is None:
        return
    wall = result.wall_s or max(0.0, result.finished_at - result.started_at)
    held = devices_per_node * held_nodes if devices_per_node else result.ranks
    record.node_hours = held_nodes * wall / 3600
    record.node_hours_basis = (
        f"{'this machine: ' if local else ''}nodes held x task wall (start or launch to result)"
    )
    record.ranks, record.nodes_used = result.ranks, result.nodes
    record.devices_per_rank, record.device_type = result.devices_per_rank, result.device_type
    record.device_names, record.dist_backend = list(result.device_names), result.dist_backend
    record.sharded, record.accelerator_s = result.sharded, result.accelerator_s
    record.devices_held = held
    window = result.train_window_s or wall
    record.train_window_s = window
    # crossfl.client.telemetry.device_busy_fraction's formula (no torch import here)
    record.device_busy = result.accelerator_s / (held * window) if held and window > 0 else 0.0


class AggregationRecord(MetricsRecord):
    kind: Literal["aggregation"] = "aggregation"
    round: int
    version: int
    driver: str
    sites: list[str]
    started_s: float | None = None  # run time when it began (runs before it: None)
    elapsed_s: float  # run time when it ended
    staleness: dict[str, int]
    updates: int | None = None  # async: accepted updates so far


class RefusedGlobalRecord(MetricsRecord):
    """An aggregation whose new global was refused (not finite, or too far): the last good
    global stays, the strategy goes back to its last checkpoint."""

    kind: Literal["refused_global"] = "refused_global"
    round: int
    version: int  # the global that stays
    sites: list[str]
    reason: str
    elapsed_s: float


class EvalRecord(MetricsRecord):
    """The untrained adapter's evaluation (``baseline``) or a global version's (``round``)."""

    kind: Literal["baseline", "round"]
    round: int
    val_loss: float
    # per task: [value tokens predicted right, value tokens] (crossfl.client.evaluate)
    answer_tokens: dict[str, tuple[int, int]] = Field(default_factory=dict)
    exact_match: dict[str, float] = Field(default_factory=dict)
    num_samples: int | None = None
    started_s: float | None = None  # run time when the evaluation was sent (runs before it: None)
    elapsed_s: float  # run time when its result came back

    def answer_accuracy(self, task: str | None = None) -> float | None:
        """The share of the answers' value tokens predicted right: of ``task``, or of all."""
        rows = [v for t, v in self.answer_tokens.items() if task is None or t == task]
        total = sum(n for _, n in rows)
        return sum(right for right, _ in rows) / total if total else None

    def headline(self) -> str:
        """``val loss 0.9189, answer tokens 41%``: what the console says of an evaluation (a
        round's line, with it, fits 80 columns)."""
        acc = self.answer_accuracy()
        return f"val loss {self.val_loss:.4f}" + (
            f", answer tokens {acc:.0%}" if acc is not None else ""
        )

    strategy: str
    version: int
    updates: int
    bytes_down: int
    transport: str
    driver: str


class SkippedRecord(MetricsRecord):
    kind: Literal["skipped"] = "skipped"
    round: int
    site: str
    reason: str
    at_rel_s: float


class ResumeRecord(MetricsRecord):
    """A resumed run: records after ``metrics_bytes`` that came before this one no longer count."""

    kind: Literal["resume"] = "resume"
    round: int
    version: int
    metrics_bytes: int
    at: float
    elapsed_s: float


class DispatchRecord(MetricsRecord):
    """A decision of the run's dispatch policy (crossfl.server.dispatch) for one site."""

    kind: Literal["dispatch"] = "dispatch"
    site: str
    at_s: float  # clock time of the decision
    action: str  # keep-warm, release-idle, shorten, next-pilot, walltime
    detail: dict[str, Any] = Field(default_factory=dict)


class PilotRecord(MetricsRecord):
    """A replay's pilot job (one block of a simulated endpoint), written when it ends: its
    queue wait, the time it held its nodes (idle included) and why it ended."""

    kind: Literal["pilot"] = "pilot"
    site: str
    profile: str
    facility: str
    queue: str
    mode: str
    block: int
    nodes: int
    walltime_s: float
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    queue_wait_s: float | None = None
    held_s: float
    node_hours: float
    end_reason: str | None = None
    tasks: int


class SimulationRecord(MetricsRecord):
    """A replay's last record: the scenario, the seed, and its virtual totals."""

    kind: Literal["simulation"] = "simulation"
    scenario: str
    scenario_file: str
    seed: int
    profiles: dict[str, str]
    virtual_s: float
    node_hours: float
    cache_hits: int
    cache_misses: int
    events: int
    end: str | None = None  # finished (rounds or target), horizon (cut there), budget
    horizon_s: float | None = None


AnyRecord = Annotated[
    TaskRecord
    | AggregationRecord
    | RefusedGlobalRecord
    | EvalRecord
    | SkippedRecord
    | ResumeRecord
    | DispatchRecord
    | PilotRecord
    | SimulationRecord,
    Field(discriminator="kind"),
]
RECORD = TypeAdapter(AnyRecord)
