"""One replay as a comparison reads it: did it reach the target, when, at what node-hours."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossfl.server.records import EvalRecord, PilotRecord, SimulationRecord
from crossfl.server.telemetry import live_records, of_kind


@dataclass
class ReplayOutcome:
    """One replay, as the comparison reads it."""

    variant: str
    seed: int
    config: dict[str, Any]
    reached: bool
    time_s: float | None  # to the target; None: censored
    stopped_s: float  # virtual time the run stopped at
    end: str  # target, horizon, budget (compute guard) or finished (reference)
    node_hours: float  # held up to the target (or to the stop)
    final_loss: float
    curve: list[tuple[float, float]]  # (virtual s, validation loss), baseline first
    wall_s: float  # real seconds the replay took
    updates: int = 0

    def time_or(self, horizon_s: float) -> float:
        """The time to target, a censored run counting as the horizon."""
        return self.time_s if self.time_s is not None else horizon_s


def time_to_target(evals: list[EvalRecord], target: float) -> float:
    reached = [e.elapsed_s for e in evals if e.kind == "round" and e.val_loss <= target]
    return min(reached) if reached else math.inf


def node_hours_until(pilots: list[PilotRecord], t: float) -> float:
    """What the pilots held from their start to ``t`` (virtual seconds), in node-hours."""
    if math.isinf(t):
        return math.inf
    held = 0.0
    for p in pilots:
        if p.started_at is None or p.started_at >= t:
            continue
        end = t if p.ended_at is None else min(p.ended_at, t)
        held += p.nodes * max(0.0, end - p.started_at) / 3600
    return held


def read_outcome(
    run_dir: Path, variant: str, seed: int, config: dict[str, Any], target: float, wall_s: float
) -> ReplayOutcome:
    records = live_records(run_dir / "metrics.jsonl")
    evals = of_kind(records, EvalRecord)
    sim = of_kind(records, SimulationRecord)[-1]
    t = time_to_target(evals, target)
    reached = math.isfinite(t)
    end = "target" if reached else sim.end or "finished"
    if not reached and end == "finished":
        end = "budget"
    stop = t if reached else sim.virtual_s
    rounds = [e for e in evals if e.kind == "round"]
    return ReplayOutcome(
        variant=variant,
        seed=seed,
        config=config,
        reached=reached,
        time_s=t if reached else None,
        stopped_s=sim.virtual_s,
        end=end,
        node_hours=node_hours_until(of_kind(records, PilotRecord), stop),
        final_loss=rounds[-1].val_loss if rounds else math.nan,
        curve=[(e.elapsed_s, e.val_loss) for e in evals],
        wall_s=wall_s,
        updates=rounds[-1].updates if rounds else 0,
    )
