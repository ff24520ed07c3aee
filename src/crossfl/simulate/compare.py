"""`crossfl simulate EXP --queues SCENARIO --compare`: strategies and dispatch policies on the
same scenario, paired by seed, as a test that could fail.

The rules, fixed before any run and the same for every variant:

- *Target*: ``TARGET_FACTOR`` x the final validation loss of FedAvg replayed with the
  experiment's rounds and no queue.
- *Horizon*: every run stops at the target or when virtual time reaches ``horizon_h``; a
  compute guard (``GUARD`` x the experiment's client updates) also stops it, and it is then
  censored at the virtual time it reached. A run that did not reach the target is censored.
- *Censoring*: a comparator that did not reach the target counts as the horizon (its time
  is at least that, so our ratio is an upper bound); if *ours* did not reach it on some
  seed, no claim is made, whatever the ratios.
- *Local work*: one scale for all, from the experiment's ``local_steps`` L: FedAvg, FedAsync
  and FedBuff run L steps a task; FedQueue's and FedCompass' step bounds lie within
  [L/2, 2L]. One replayed step stands for ``work_unit`` steps at the facility (virtual time
  only: the scenario's seconds per step times the unit), so tasks last as long, against
  the queue waits, as real fine-tuning tasks would.
- *Tuning*: each strategy's parameters (FedQueue ``t_sync``, ``theta`` and ``warm_up_steps``,
  FedCompass' step range, FedBuff's K, FedAsync's alpha) are chosen among a few candidates
  by the geometric mean time to target on ``TUNING_SEEDS``, which are not evaluation seeds;
  the candidates and the choice are reported.
- *Statistics*: per pair, the geometric mean of the per-seed time ratios with its 95% BCa
  interval from a paired bootstrap over the seeds (``scipy.stats.bootstrap``), the ratio of
  mean times beside it, the same for node-hours (what the pilots held up to the target,
  idle included). No verdict below ``MIN_SEEDS`` seeds. The claim rule: the upper bound of
  our time ratio to FedQueue under 0.80 and of our node-hour ratio at most 1.

The modules: this one (the rules, the variants, the run), ``outcome`` (one replay read),
``jobs`` (worker processes, kept outcomes), ``verdict`` (ratios, intervals, the claim rule),
``compare_report`` (tables, summary, plot).

Replays run over worker processes, each a light replay (no checkpoints, plots or final
adapter; evaluation by loss only where the experiment says); every outcome is kept under
runs/.simulate-cache/outcomes, keyed by everything it depends on (code version included),
so an interrupted comparison resumes where it stopped.

``--reproduce`` is the first stage: APPFL's own queue example (its per-client mean waits,
slowdowns, ``t_sync`` and theta) with FedAvg, FedAsync and FedQueue at APPFL's parameters,
untuned, to see whether FedQueue's direction against them holds here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from crossfl.server.experiment import Experiment, with_changes
from crossfl.server.strategies import is_async
from crossfl.simulate.compare_report import comparison_plot, tables, write_summary
from crossfl.simulate.jobs import ReplayJob, Runner
from crossfl.simulate.outcome import ReplayOutcome, node_hours_until, time_to_target
from crossfl.simulate.scenario import Scenario, no_queue
from crossfl.simulate.verdict import (
    MIN_SEEDS,
    PAIRS_TO,
    VERDICT,
    Comparison,
    Ratio,
    paired_ratio,
)

__all__ = [
    "MIN_SEEDS",
    "TUNING_SEEDS",
    "Comparison",
    "ReplayOutcome",
    "Ratio",
    "Variant",
    "node_hours_until",
    "paired_ratio",
    "run_comparison",
    "tables",
    "time_to_target",
    "variant_experiment",
]

TARGET_FACTOR = 1.02
GUARD = 4  # compute guard: at most this many times the experiment's client updates
HORIZON_H = 96.0
HORIZON_H_REPRODUCE = 1.0  # APPFL's example: rounds of seconds
TUNING_SEEDS = (1000, 1001)  # evaluation seeds are 0..N-1, N <= 1000
WORK_UNIT = 60  # facility steps one replayed step stands for (virtual time)


@dataclass(frozen=True)
class Variant:
    """A strategy with a dispatch policy; ``grid`` holds its candidate arguments (tuned)."""

    label: str
    strategy: str
    grid: tuple[dict[str, Any], ...] = ({},)
    dispatch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scale:
    """The local work every strategy shares, from the experiment."""

    steps: int  # L: a task's local steps
    task_s: float  # L steps at the slowest site's (scaled) speed

    @property
    def lo(self) -> int:
        return max(1, self.steps // 2)

    @property
    def hi(self) -> int:
        return 2 * self.steps


def compare_variants(s: Scale) -> tuple[Variant, ...]:
    """The comparison: five strategies as published, FedQueue with our warm pilots only, and
    ours (FedQueue with the queue-aware policy); four candidates for each tuned strategy."""
    L, lo, hi = s.steps, s.lo, s.hi
    fedqueue = tuple(
        {"t_sync": round(k * s.task_s), "theta": round(t), "warm_up_steps": w}
        | {"max_local_steps": hi}
        for k, t, w in ((2, 60, L), (4, 60, L), (4, s.task_s / 2, L), (8, s.task_s / 2, lo))
    )
    warm = {
        "name": "queue-aware",
        "fit_walltime": False,
        "fit_shape": False,
        "next_pilot": False,
        "weighting": False,
    }
    return (
        Variant("fedavg", "fedavg"),
        Variant("fedasync", "fedasync", tuple({"alpha": a} for a in (0.3, 0.5, 0.7, 0.9))),
        Variant(
            "fedbuff",
            "fedbuff",
            tuple({"K": k, "alpha": a} for k, a in ((1, 0.9), (2, 0.9), (3, 0.9), (2, 0.5))),
        ),
        Variant(
            "fedcompass",
            "fedcompass",
            tuple(
                {"min_local_steps": a, "max_local_steps": b}
                for a, b in ((lo, L), (lo, hi), (L, hi), (L, L))
            ),
        ),
        Variant("fedqueue", "fedqueue", fedqueue),
        Variant("fedqueue+warm", "fedqueue", fedqueue, warm),
        Variant("ours", "fedqueue", fedqueue, {"name": "queue-aware"}),
    )


# APPFL's queue example (APPFL/APPFL examples/QFL/configs/queue_case2.yaml, case2 block):
# Tsync 10 s, theta 2 s, warmup 10 steps, admission slack 0.2, EWMA 0.5, harmonic staleness
# with gamma 0.5, q_init 0.
APPFL_FEDQUEUE = {
    "t_sync": 10.0,
    "theta": 2.0,
    "q_init": 0.0,
    "warm_up_steps": 10,
    "alpha_admission": 0.2,
    "beta_queue": 0.5,
    "alpha_compute": 0.5,
    "staleness_fn": "harmonic",
    "beta": 0.5,
}


def reproduce_variants(s: Scale) -> tuple[Variant, ...]:
    """FedQueue's own setting: FedAvg, FedAsync and FedQueue at APPFL's parameters."""
    return (
        Variant("fedavg", "fedavg"),
        Variant("fedasync", "fedasync"),
        Variant("fedqueue", "fedqueue", (APPFL_FEDQUEUE,)),
    )


# ---------------------------------------------------------------------------- the whole thing


def work_scaled(scenario: Scenario, unit: int) -> Scenario:
    """``scenario`` with every site's step ``unit`` times as long (one replayed step stands
    for ``unit`` steps at the facility); loads, waits and transfers unchanged."""
    sites = [
        p.model_copy(
            update={
                "speed": p.speed.model_copy(
                    update={"seconds_per_step": p.speed.seconds_per_step * unit}
                )
            }
        )
        for p in scenario.sites
    ]
    return Scenario.model_validate(
        {**scenario.model_dump(), "sites": [s.model_dump() for s in sites]}
    )


def scale_of(experiment: Experiment, scenario: Scenario) -> Scale:
    profiles = scenario.assign([e.name for e in experiment.sites])
    slowest = max(p.speed.seconds_per_step for p in profiles.values())
    L = experiment.training.local_steps
    return Scale(L, L * slowest)


def variant_experiment(
    experiment: Experiment,
    source: Path,
    v: Variant,
    kwargs: dict[str, Any],
    target: float | None,
) -> Experiment:
    """The experiment as variant ``v`` runs it: its strategy and dispatch; with a target, it
    stops there or at the compute guard (``GUARD`` x the experiment's updates)."""
    changes: dict[str, Any] = {
        "name": f"{experiment.name}-{v.label.replace('+', '-')}",
        # the target is a loss: no generation for exact match in a comparison's evaluations
        "evaluation": {**experiment.evaluation.model_dump(), "generate_samples": 0},
        "strategy": {"name": v.strategy, "kwargs": kwargs},
        "dispatch": dict(v.dispatch),
        "driver": "auto",
        "max_updates": None,
    }
    if target is not None:
        changes.update(stop_at_loss=target, rounds=GUARD * experiment.rounds)
        if is_async(v.strategy):
            changes["max_updates"] = GUARD * experiment.rounds * len(experiment.sites)
    return with_changes(experiment, source, **changes)


def run_comparison(
    experiment: Experiment,
    source: Path,
    scenario: Scenario,
    scenario_file: Path,
    seeds: int,
    console: Console,
    out_dir: Path,
    task_timeout_s: float | None = None,
    *,
    reproduce: bool = False,
    workers: int | None = None,
    horizon_h: float | None = None,
    work_unit: int | None = None,
    variants: tuple[Variant, ...] | None = None,
) -> Comparison:
    from crossfl.paths import runs_dir
    from crossfl.server.lifecycle import site_data_paths
    from crossfl.simulate.replay import CACHE_DIR, check_replayable, data_dir

    t0 = time.monotonic()
    unit = work_unit if work_unit is not None else (1 if reproduce else WORK_UNIT)
    default_h = HORIZON_H_REPRODUCE if reproduce else HORIZON_H
    horizon_s = 3600.0 * (horizon_h if horizon_h is not None else default_h)
    scaled = work_scaled(scenario, unit)
    scale = scale_of(experiment, scaled)
    chosen_variants = variants or (reproduce_variants if reproduce else compare_variants)(scale)
    workers = workers or os.cpu_count() or 1
    runner = Runner(console, workers, runs_dir() / CACHE_DIR / "outcomes")
    console.print(
        f"rules: horizon {horizon_s / 3600:.0f} virtual h, compute guard {GUARD}x the "
        f"experiment's updates, target {TARGET_FACTOR} x FedAvg's final loss with no queue; "
        f"local work L={scale.steps} steps (bounds {scale.lo}-{scale.hi}), one replayed step "
        f"= {unit} facility steps; {workers} worker process(es)",
        highlight=False,
    )
    # the partitioned data, once, before any worker reads it
    plan = check_replayable(experiment, source, task_timeout_s)
    site_data_paths(plan, data_dir(plan))

    def job(
        phase: str,
        v: Variant,
        kwargs: dict[str, Any],
        seed: int,
        sc: Scenario,
        target: float,
        horizon: float | None,
        stop: bool = True,
    ) -> ReplayJob:
        exp = variant_experiment(experiment, source, v, kwargs, target if stop else None)
        return ReplayJob(
            phase,
            v.label,
            kwargs,
            exp.model_dump(mode="json"),
            str(source),
            sc.model_dump(mode="json"),
            str(scenario_file),
            seed,
            horizon,
            target,
            task_timeout_s,
        )

    # 1. the target, fixed before any variant runs: FedAvg with no queue
    fedavg = Variant("fedavg", "fedavg")
    ref = runner.run(
        [job("reference", fedavg, {}, 0, no_queue(scaled), 0.0, None, False)], "reference"
    )[0]
    target = TARGET_FACTOR * ref.final_loss
    console.print(
        f"target validation loss {target:.4f} ({TARGET_FACTOR} x FedAvg's final "
        f"{ref.final_loss:.4f} with no queue)",
        highlight=False,
    )
    # 2. tuning, on seeds kept apart
    tuning: dict[str, list[tuple[dict[str, Any], float]]] = {}
    chosen: dict[str, dict[str, Any]] = {}
    tune_jobs = [
        job("tune", v, kw, s, scaled, target, horizon_s)
        for v in chosen_variants
        if len(v.grid) > 1
        for kw in v.grid
        for s in TUNING_SEEDS
    ]
    tuned = runner.run(tune_jobs, "tuning") if tune_jobs else []
    for v in chosen_variants:
        if len(v.grid) == 1:
            chosen[v.label] = v.grid[0]
            continue
        scores = []
        for kw in v.grid:
            times = [o.time_or(horizon_s) for o in tuned if o.variant == v.label and o.config == kw]
            scores.append((kw, float(np.exp(np.mean(np.log(times))))))
        tuning[v.label] = scores
        chosen[v.label] = min(scores, key=lambda s: s[1])[0]
    # 3. evaluation seeds 0..N-1
    eval_jobs = [
        job("eval", v, chosen[v.label], s, scaled, target, horizon_s)
        for s in range(seeds)
        for v in chosen_variants
    ]
    done = runner.run(eval_jobs, "evaluation")
    outcomes: dict[str, list[ReplayOutcome]] = {v.label: [] for v in chosen_variants}
    for o in done:
        outcomes[o.variant].append(o)
    c = Comparison(
        "reproduce" if reproduce else "compare",
        target,
        ref.final_loss,
        seeds,
        horizon_s,
        unit,
        outcomes,
        tuning,
        chosen,
        {},
        TUNING_SEEDS,
    )
    pairs = [(v, PAIRS_TO) for v in outcomes if v != PAIRS_TO and PAIRS_TO in outcomes]
    pairs += [p for p in VERDICT if p[0] in outcomes and p[1] in outcomes and p not in pairs]
    for a, b in pairs:
        c.ratios[(a, b)] = {
            "time": paired_ratio(c.times(a), c.times(b)),
            "node_hours": paired_ratio(
                [o.node_hours for o in outcomes[a]], [o.node_hours for o in outcomes[b]]
            ),
        }
    c.wall_s, c.replays, c.replay_wall_s = (
        time.monotonic() - t0,
        runner.replays,
        runner.replay_wall_s,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison_plot(c, out_dir / "loss_vs_time.png")
    write_summary(c, out_dir / "comparison.json")
    return c
