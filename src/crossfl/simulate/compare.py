"""`crossfl simulate EXP --queues SCENARIO --compare`: the strategies and dispatch policies on
the same scenario, paired by seed, with bootstrap confidence intervals.

Each variant replays the experiment once per queue seed; seed k draws the same queue waits
for every variant (each site's streams are seeded by the scenario, the seed and the site), so
variants are compared seed by seed. The target validation loss is fixed before any variant
runs: ``TARGET_FACTOR`` x FedAvg's final loss with no queue (FedAvg's training does not depend
on the queue: its replays all end at that loss). Per run: time to target (the first
evaluation at or under it, virtual seconds) and node-hours to target (what the pilots held up
to then, idle included). Per pair of variants: the ratio of mean time (and node-hours) over
the seeds, with a 95% interval from resampling the seeds (paired bootstrap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from crossfl.server.experiment import DispatchSettings, Experiment, StrategySettings
from crossfl.server.records import EvalRecord, PilotRecord
from crossfl.server.report import compare_plot
from crossfl.server.strategies import is_async
from crossfl.server.telemetry import live_records, of_kind
from crossfl.simulate.cache import ResultCache
from crossfl.simulate.replay import CACHE_DIR, check_replayable, replay
from crossfl.simulate.scenario import Scenario, no_queue

TARGET_FACTOR = 1.02
RESAMPLES = 2000
BUDGET = 3  # each variant may take this many times the experiment's rounds (or updates)


@dataclass(frozen=True)
class Variant:
    """A strategy with a dispatch policy."""

    label: str
    strategy: str
    dispatch: dict[str, Any] = field(default_factory=dict)


VARIANTS = (
    Variant("fedavg", "fedavg"),
    Variant("fedasync", "fedasync"),
    Variant("fedbuff", "fedbuff"),
    Variant("fedcompass", "fedcompass"),
    Variant("fedqueue", "fedqueue"),
    # FedQueue with the pilots ours keeps: a gain over it is not only from warm pilots
    Variant("fedqueue+warm", "fedqueue", {"name": "queue-aware", "fit_walltime": False}),
    Variant("ours", "fedqueue", {"name": "queue-aware"}),
)
PAIRS = (
    ("fedqueue", "fedavg"),
    ("fedqueue", "fedasync"),
    ("ours", "fedqueue"),
    ("ours", "fedqueue+warm"),
)


@dataclass(frozen=True)
class RunOutcome:
    variant: str
    seed: int
    run_dir: Path
    time_to_target_s: float  # inf: never reached
    node_hours_to_target: float  # inf: never reached
    final_loss: float


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


def outcome(variant: str, seed: int, run_dir: Path, target: float) -> RunOutcome:
    records = live_records(run_dir / "metrics.jsonl")
    evals = of_kind(records, EvalRecord)
    t = time_to_target(evals, target)
    finals = [e.val_loss for e in evals if e.kind == "round"]
    return RunOutcome(
        variant,
        seed,
        run_dir,
        t,
        node_hours_until(of_kind(records, PilotRecord), t),
        finals[-1] if finals else math.nan,
    )


def paired_ratio(
    a: list[float], b: list[float], rng: np.random.Generator, resamples: int = RESAMPLES
) -> tuple[float, float, float]:
    """mean(a) / mean(b) over paired seeds, and its 95% bootstrap interval (seeds resampled
    together). Any run that never reached the target makes the ratio undefined (nan)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or len(x) == 0:
        return math.nan, math.nan, math.nan
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    ratios = x[idx].mean(axis=1) / y[idx].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(x.mean() / y.mean()), float(low), float(high)


@dataclass
class Comparison:
    target: float
    seeds: int
    outcomes: dict[str, list[RunOutcome]]
    ratios: dict[tuple[str, str], dict[str, tuple[float, float, float]]]

    def verdict(self, gain: float = 0.20) -> str:
        """Ours against FedQueue: a gain is claimed only when the interval's upper bound on the
        time ratio is under 1 - gain, at no more node-hours (the node-hour ratio's bound <= 1)."""
        for other in ("fedqueue", "fedqueue+warm"):
            r = self.ratios.get(("ours", other))
            if r is None or math.isnan(r["time"][0]):
                return f"ours vs {other}: a run never reached the target; no claim"
        lines = []
        for other in ("fedqueue", "fedqueue+warm"):
            t, nh = self.ratios[("ours", other)]["time"], self.ratios[("ours", other)]["node_hours"]
            ok = t[2] < 1 - gain and nh[2] <= 1.0
            lines.append(
                f"ours vs {other}: time x{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}], node-hours "
                f"x{nh[0]:.2f} [{nh[1]:.2f}, {nh[2]:.2f}]: "
                + (
                    f"{gain:.0%} sooner at no more node-hours: claimed"
                    if ok
                    else f"{gain:.0%} sooner at no more node-hours: not shown"
                )
            )
        return "\n".join(lines)


def fedqueue_t_sync(experiment: Experiment, scenario: Scenario) -> float:
    """FedQueue's target round length for this experiment and scenario: the experiment's local
    steps at the slowest site's speed, plus FedQueue's safety buffer (theta, 60 s) and prior
    queue delay (q_init, 2 s), so its first tasks plan the experiment's own local steps. Its
    default (3600 s) would have each site train for an hour of simulated steps: thousands of
    real steps here."""
    profiles = scenario.assign([e.name for e in experiment.sites])
    slowest = max(p.speed.seconds_per_step for p in profiles.values())
    return experiment.training.local_steps * slowest + 60.0 + 2.0


def variant_experiment(
    experiment: Experiment, v: Variant, t_sync: float, target: float | None = None
) -> Experiment:
    kwargs = {"t_sync": t_sync} if v.strategy == "fedqueue" else {}
    update: dict[str, Any] = {
        "name": f"{experiment.name}-{v.label.replace('+', '-')}",
        "strategy": StrategySettings(name=v.strategy, kwargs=kwargs),
        "dispatch": DispatchSettings(**v.dispatch),
        "driver": "auto",
    }
    budget = 1 if target is None else BUDGET  # the reference run: the experiment as it is
    if target is not None:
        update.update(stop_at_loss=target, rounds=budget * experiment.rounds)
    if is_async(v.strategy):  # as many client updates as the synchronous rounds take
        update["max_updates"] = budget * experiment.rounds * len(experiment.sites)
    return experiment.model_copy(update=update)


def run_comparison(
    experiment: Experiment,
    source: Path,
    scenario: Scenario,
    scenario_file: Path,
    seeds: int,
    console: Console,
    out_dir: Path,
    task_timeout_s: float | None = None,
    variants: tuple[Variant, ...] = VARIANTS,
) -> Comparison:
    from crossfl.paths import runs_dir

    cache = ResultCache(runs_dir() / CACHE_DIR / "results")
    quiet = Console(quiet=True)  # the replays' own output
    t_sync = fedqueue_t_sync(experiment, scenario)
    console.print(
        f"FedQueue t_sync {t_sync:.0f} s (the local steps at the slowest site's "
        "speed, theta and q_init)"
    )
    # the target, fixed before any variant runs: FedAvg with no queue
    reference = check_replayable(
        variant_experiment(experiment, VARIANTS[0], t_sync), source, task_timeout_s
    )
    calm = replay(reference, source, no_queue(scenario), scenario_file, 0, quiet, cache)
    final = outcome("reference", 0, calm.run_dir, 0.0).final_loss
    target = TARGET_FACTOR * final
    console.print(
        f"target validation loss {target:.4f} ({TARGET_FACTOR} x FedAvg's final "
        f"{final:.4f} with no queue)"
    )
    plans = {
        v.label: check_replayable(
            variant_experiment(experiment, v, t_sync, target), source, task_timeout_s
        )
        for v in variants
    }
    outcomes: dict[str, list[RunOutcome]] = {v.label: [] for v in variants}
    total = len(variants) * seeds
    done = 0
    for seed in range(seeds):
        for v in variants:
            r = replay(plans[v.label], source, scenario, scenario_file, seed, quiet, cache)
            outcomes[v.label].append(outcome(v.label, seed, r.run_dir, target))
            done += 1
            console.print(
                f"  [{done}/{total}] seed {seed} {v.label}: "
                f"{_fmt_h(outcomes[v.label][-1].time_to_target_s)} to target",
                highlight=False,
            )
    rng = np.random.default_rng(0)
    ratios = {}
    for a, b in PAIRS:
        if a in outcomes and b in outcomes:
            ratios[(a, b)] = {
                "time": paired_ratio(
                    [o.time_to_target_s for o in outcomes[a]],
                    [o.time_to_target_s for o in outcomes[b]],
                    rng,
                ),
                "node_hours": paired_ratio(
                    [o.node_hours_to_target for o in outcomes[a]],
                    [o.node_hours_to_target for o in outcomes[b]],
                    rng,
                ),
            }
    out_dir.mkdir(parents=True, exist_ok=True)
    compare_plot([outcomes[v.label][0].run_dir for v in variants], out_dir / "loss_vs_time.png")
    return Comparison(target, seeds, outcomes, ratios)


def _fmt_h(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds / 3600:.2f} h"


def tables(c: Comparison) -> list[Table]:
    per = Table(title=f"time and node-hours to loss {c.target:.4f}, {c.seeds} seeds")
    for col in ("variant", "reached", "mean time (h)", "mean node-h"):
        per.add_column(col, justify="left" if col == "variant" else "right")
    for label, runs in c.outcomes.items():
        ok = [o for o in runs if math.isfinite(o.time_to_target_s)]
        per.add_row(
            label,
            f"{len(ok)}/{len(runs)}",
            f"{np.mean([o.time_to_target_s for o in ok]) / 3600:.2f}" if ok else "-",
            f"{np.mean([o.node_hours_to_target for o in ok]):.2f}" if ok else "-",
        )
    pairs = Table(title="paired ratios, 95% bootstrap interval")
    for col in ("A / B", "time", "node-hours"):
        pairs.add_column(col, justify="left" if col == "A / B" else "right")
    for (a, b), r in c.ratios.items():
        pairs.add_row(f"{a} / {b}", *(_fmt_ratio(r[k]) for k in ("time", "node_hours")))
    return [per, pairs]


def _fmt_ratio(r: tuple[float, float, float]) -> str:
    return "-" if math.isnan(r[0]) else f"{r[0]:.2f} [{r[1]:.2f}, {r[2]:.2f}]"
