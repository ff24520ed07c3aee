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

Replays run over worker processes, each a light replay (no checkpoints, plots or final
adapter; evaluation by loss only where the experiment says); every outcome is kept under
runs/.simulate-cache/outcomes, keyed by everything it depends on (code version included),
so an interrupted comparison resumes where it stopped.

``--reproduce`` is the first stage: APPFL's own queue example (its per-client mean waits,
slowdowns, ``t_sync`` and theta) with FedAvg, FedAsync and FedQueue at APPFL's parameters,
untuned, to see whether FedQueue's direction against them holds here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from crossfl.server.experiment import Experiment, with_changes
from crossfl.server.records import EvalRecord, PilotRecord, SimulationRecord
from crossfl.server.strategies import is_async
from crossfl.server.telemetry import live_records, of_kind
from crossfl.simulate.cache import replay_version
from crossfl.simulate.scenario import Scenario, no_queue

COMPARE_VERSION = 1  # raise when what an outcome means changes
TARGET_FACTOR = 1.02
MIN_SEEDS = 10  # no verdict on fewer evaluation seeds
GAIN = 0.20  # the claim: at least this much sooner (upper bound of the ratio under 1 - GAIN)
RESAMPLES = 4999
CONFIDENCE = 0.95
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


PAIRS_TO = "fedqueue"  # every variant's ratio is to FedQueue
VERDICT = (("ours", "fedqueue"), ("ours", "fedqueue+warm"))


# ---------------------------------------------------------------------------- one run


@dataclass
class Outcome:
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
) -> Outcome:
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
    return Outcome(
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


# ---------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """One replay for a worker process (plain data: it crosses a process boundary)."""

    phase: str  # reference, tune, eval
    variant: str
    config: dict[str, Any]
    experiment: dict[str, Any]
    source: str
    scenario: dict[str, Any]
    scenario_file: str
    seed: int
    horizon_s: float | None
    target: float
    task_timeout_s: float | None

    @property
    def key(self) -> str:
        facts = {
            "v": COMPARE_VERSION,
            "code": replay_version(),
            "experiment": self.experiment,
            "scenario": self.scenario,
            "seed": self.seed,
            "horizon": self.horizon_s,
            "target": self.target,
            "timeout": self.task_timeout_s,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


_PLANS: dict[str, Any] = {}  # per worker process: plans already checked


def run_job(job: Job) -> dict[str, Any]:
    """A replay in this (worker) process; its outcome as plain data."""
    from crossfl.paths import runs_dir
    from crossfl.simulate.cache import ResultCache
    from crossfl.simulate.replay import CACHE_DIR, check_replayable, replay

    t0 = time.perf_counter()
    experiment = Experiment.model_validate(job.experiment)
    plan_key = json.dumps(job.experiment, sort_keys=True, default=str)
    if plan_key not in _PLANS:
        _PLANS[plan_key] = check_replayable(experiment, Path(job.source), job.task_timeout_s)
    cache = ResultCache(runs_dir() / CACHE_DIR / "results")
    run_dir = runs_dir() / CACHE_DIR / "replays" / job.key[:20]
    replay(
        _PLANS[plan_key],
        Path(job.source),
        Scenario.model_validate(job.scenario),
        Path(job.scenario_file),
        job.seed,
        Console(quiet=True),
        cache,
        run_dir=run_dir,
        horizon_s=job.horizon_s,
        light=True,
    )
    out = read_outcome(
        run_dir, job.variant, job.seed, job.config, job.target, time.perf_counter() - t0
    )
    return asdict(out)


def _outcome(data: dict[str, Any]) -> Outcome:
    data = dict(data)
    data["curve"] = [tuple(p) for p in data["curve"]]
    return Outcome(**data)


class Runner:
    """Runs jobs over worker processes, keeps every outcome, prints progress."""

    def __init__(self, console: Console, workers: int, store: Path) -> None:
        self.console, self.workers, self.store = console, max(1, workers), store
        self.replays = 0  # run here, not read from the store
        self.replay_wall_s = 0.0
        self.t0 = time.monotonic()

    def kept(self, job: Job) -> Outcome | None:
        file = self.store / f"{job.key}.json"
        return _outcome(json.loads(file.read_text())) if file.is_file() else None

    def keep(self, job: Job, data: dict[str, Any]) -> Outcome:
        from crossfl.atomic import atomic_write_text

        atomic_write_text(self.store / f"{job.key}.json", json.dumps(data))
        return _outcome(data)

    def run(self, jobs: list[Job], what: str) -> list[Outcome]:
        results: dict[int, Outcome] = {}
        todo = []
        for i, job in enumerate(jobs):
            kept = self.kept(job)
            if kept is not None:
                results[i] = kept
            else:
                todo.append(i)
        if results:
            self.console.print(f"{what}: {len(results)} of {len(jobs)} replays kept from before")
        if todo:
            self._run(jobs, todo, results, what)
        return [results[i] for i in range(len(jobs))]

    def _run(
        self, jobs: list[Job], todo: list[int], results: dict[int, Outcome], what: str
    ) -> None:
        start, n = time.monotonic(), len(todo)

        def progress(k: int, i: int) -> None:
            o = results[i]
            spent = time.monotonic() - start
            eta = spent / k * (n - k)
            said = (
                f"final loss {o.final_loss:.4f}"
                if jobs[i].phase == "reference"
                else _fmt_outcome(o)
            )
            self.console.print(
                f"  [{k}/{n}] {what} {o.variant} seed {o.seed}: {said}"
                f"  ({_clock(spent)} so far, about {_clock(eta)} left)",
                highlight=False,
            )

        if self.workers == 1:
            for k, i in enumerate(todo, 1):
                results[i] = self.keep(jobs[i], run_job(jobs[i]))
                self._count(results[i])
                progress(k, i)
            return
        with ProcessPoolExecutor(max_workers=min(self.workers, n)) as pool:
            futures = {pool.submit(run_job, jobs[i]): i for i in todo}
            for k, future in enumerate(as_completed(futures), 1):
                i = futures[future]
                results[i] = self.keep(jobs[i], future.result())
                self._count(results[i])
                progress(k, i)

    def _count(self, o: Outcome) -> None:
        self.replays += 1
        self.replay_wall_s += o.wall_s


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _fmt_outcome(o: Outcome) -> str:
    if o.reached and o.time_s is not None:
        return f"{o.time_s / 3600:.2f} h to target"
    return f"not reached ({o.end} at {o.stopped_s / 3600:.2f} h)"


# ---------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Ratio:
    """A against B over paired seeds: geometric mean of per-seed ratios with its BCa 95%
    interval, and the ratio of means with its own."""

    n: int
    gmean: float
    low: float
    high: float
    of_means: float
    of_means_low: float
    of_means_high: float


def paired_ratio(a: list[float], b: list[float], seed: int = 0) -> Ratio:
    """Paired bootstrap (seeds resampled together) of the geometric mean of a_i / b_i and of
    mean(a) / mean(b), BCa 95% intervals (scipy.stats.bootstrap). With fewer than 2 seeds
    there is no interval (nan); with the same ratio on every seed it is that ratio."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    n = len(x)
    if n == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()) or (y <= 0).any():
        nan = math.nan
        return Ratio(n, nan, nan, nan, nan, nan, nan)

    def gmean(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.exp(np.mean(np.log(p / q), axis=axis))

    def of_means(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(p, axis=axis) / np.mean(q, axis=axis)

    def interval(statistic: Callable[..., np.ndarray]) -> tuple[float, float]:
        if n < 2:
            return math.nan, math.nan
        point = float(statistic(x, y))
        if np.ptp(x / y) == 0:  # every seed the same ratio: so is every resample
            return point, point
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples: nan, reported as such
            res = stats.bootstrap(
                (x, y),
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=RESAMPLES,
                confidence_level=CONFIDENCE,
                method="BCa",
                random_state=np.random.default_rng(seed),
            )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    g_low, g_high = interval(gmean)
    m_low, m_high = interval(of_means)
    return Ratio(n, float(gmean(x, y)), g_low, g_high, float(of_means(x, y)), m_low, m_high)


@dataclass
class Comparison:
    stage: str  # compare or reproduce
    target: float
    reference_loss: float
    seeds: int
    horizon_s: float
    work_unit: int
    outcomes: dict[str, list[Outcome]]
    tuning: dict[str, list[tuple[dict[str, Any], float]]]  # candidates and their scores
    chosen: dict[str, dict[str, Any]]
    ratios: dict[tuple[str, str], dict[str, Ratio]]
    wall_s: float = 0.0
    replays: int = 0
    replay_wall_s: float = 0.0

    def times(self, label: str) -> list[float]:
        return [o.time_or(self.horizon_s) for o in self.outcomes[label]]

    def verdict(self, gain: float = GAIN) -> str:
        """Ours against FedQueue (and FedQueue with our warm pilots): the claim rule."""
        if self.stage == "reproduce":
            return self.reproduction_verdict()
        if self.seeds < MIN_SEEDS:
            return (
                f"no verdict: {self.seeds} seed(s); a verdict needs at least {MIN_SEEDS} "
                "(run with --seeds 20)"
            )
        lines = []
        for a, b in VERDICT:
            if a not in self.outcomes or b not in self.outcomes:
                continue
            missed = sum(not o.reached for o in self.outcomes[a])
            t, nh = self.ratios[(a, b)]["time"], self.ratios[(a, b)]["node_hours"]
            head = f"{a} vs {b}: time x{t.gmean:.2f} {_ci(t)}, node-h x{nh.gmean:.2f} {_ci(nh)}"
            if missed:
                lines.append(f"{head}: no claim ({a} missed the target on {missed} seed(s))")
                continue
            ok = t.high < 1 - gain and nh.high <= 1.0
            lines.append(
                f"{head}: {gain:.0%} sooner at no more node-hours: "
                + ("claimed" if ok else "not shown")
            )
        return "\n".join(lines)

    def reproduction_verdict(self) -> str:
        """FedQueue's direction against FedAvg and FedAsync (its paper: sooner than both)."""
        if self.seeds < MIN_SEEDS:
            return f"no verdict: {self.seeds} seed(s); one needs at least {MIN_SEEDS}"
        lines = []
        for other in ("fedavg", "fedasync"):
            r = self.ratios.get(("fedqueue", other), {}).get("time")
            if r is None:
                continue
            if math.isnan(r.high):
                word = "undecided (no interval)"
            elif r.high < 1:
                word = "reproduced (FedQueue sooner)"
            elif r.low > 1:
                word = "NOT reproduced (FedQueue later)"
            else:
                word = "not reproduced (no difference shown)"
            lines.append(f"fedqueue vs {other}: time x{r.gmean:.2f} {_ci(r)}: {word}")
        return "\n".join(lines)


def _ci(r: Ratio) -> str:
    return "[-]" if math.isnan(r.low) else f"[{r.low:.2f}, {r.high:.2f}]"


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
    ) -> Job:
        exp = variant_experiment(experiment, source, v, kwargs, target if stop else None)
        return Job(
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
    outcomes: dict[str, list[Outcome]] = {v.label: [] for v in chosen_variants}
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
    )
    pairs = [(v, PAIRS_TO) for v in outcomes if v != PAIRS_TO and PAIRS_TO in outcomes]
    pairs += [p for p in VERDICT if p[0] in outcomes and p[1] in outcomes and p not in pairs]
    if reproduce:
        pairs = [("fedqueue", "fedavg"), ("fedqueue", "fedasync")]
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


# ---------------------------------------------------------------------------- output


def tables(c: Comparison) -> list[Table]:
    per = Table(
        title=f"to loss {c.target:.4f}, {c.seeds} seeds, horizon {c.horizon_s / 3600:.0f} h"
    )
    for col in ("variant", "reached", "median h", "IQR h", "x FedQueue", "node-h x"):
        per.add_column(col, justify="left" if col == "variant" else "right")
    for label, runs in c.outcomes.items():
        times = np.array(c.times(label)) / 3600
        q1, med, q3 = np.percentile(times, [25, 50, 75]) if len(times) else (math.nan,) * 3
        r = c.ratios.get((label, PAIRS_TO)) or c.ratios.get((PAIRS_TO, label))
        flip = (label, PAIRS_TO) not in c.ratios
        per.add_row(
            label,
            f"{sum(o.reached for o in runs)}/{len(runs)}",
            f"{med:.2f}",
            f"{q1:.2f}-{q3:.2f}",
            "1" if label == PAIRS_TO else _ratio_cell(r["time"], flip) if r else "-",
            "1" if label == PAIRS_TO else _nh_cell(r["node_hours"], flip) if r else "-",
        )
    out = [per]
    if c.tuning:
        tune = Table(title=f"tuning on seeds {', '.join(map(str, TUNING_SEEDS))} (geo-mean h)")
        for col in ("variant", "candidates (chosen first)"):
            tune.add_column(col)
        for label, scores in c.tuning.items():
            ranked = sorted(scores, key=lambda s: s[1])
            tune.add_row(label, "; ".join(f"{_kw(kw)}: {score / 3600:.2f}" for kw, score in ranked))
        out.append(tune)
    return out


def _ratio_cell(r: Ratio, flip: bool = False) -> str:
    if math.isnan(r.gmean):
        return "-"
    g, lo, hi = (1 / r.gmean, 1 / r.high, 1 / r.low) if flip else (r.gmean, r.low, r.high)
    return f"{g:.2f}" if math.isnan(lo) else f"{g:.2f} [{lo:.2f}, {hi:.2f}]"


def _nh_cell(r: Ratio, flip: bool = False) -> str:
    if math.isnan(r.gmean):
        return "-"
    return f"{1 / r.gmean if flip else r.gmean:.2f}"


def _kw(kw: dict[str, Any]) -> str:
    short = {
        "t_sync": "t",
        "theta": "th",
        "warm_up_steps": "w",
        "max_local_steps": "max",
        "min_local_steps": "min",
        "alpha": "a",
        "K": "K",
    }
    return ",".join(
        f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
        for k, v in kw.items()
        if k in short
    )


def write_summary(c: Comparison, out: Path) -> Path:
    from crossfl.atomic import atomic_write_text

    data = {
        "stage": c.stage,
        "target": c.target,
        "reference_loss": c.reference_loss,
        "seeds": c.seeds,
        "horizon_s": c.horizon_s,
        "work_unit": c.work_unit,
        "chosen": c.chosen,
        "tuning": {k: [[kw, s] for kw, s in v] for k, v in c.tuning.items()},
        "ratios": {
            f"{a}/{b}": {k: asdict(r) for k, r in v.items()} for (a, b), v in c.ratios.items()
        },
        "outcomes": {k: [asdict(o) for o in v] for k, v in c.outcomes.items()},
        "wall_s": c.wall_s,
        "replays": c.replays,
        "replay_wall_s": c.replay_wall_s,
        "verdict": c.verdict(),
    }
    atomic_write_text(out, json.dumps(data, indent=1, default=str))
    return out


def comparison_plot(c: Comparison, out: Path) -> Path:
    """Validation loss against virtual hours, one line per variant (its median-time seed,
    from its first evaluation after training), and the time to target per seed and
    variant; log axes where the spread needs them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, runs in c.outcomes.items():
        if not runs:
            continue
        times = [o.time_or(c.horizon_s) for o in runs]
        median_run = runs[int(np.argsort(times)[len(times) // 2])]
        pts = [(t / 3600, v) for t, v in median_run.curve if t > 0]  # from the first round
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
        right.scatter([label] * len(times), np.array(times) / 3600, s=12, alpha=0.7)
    left.axhline(c.target, color="k", lw=0.8, ls="--", label="target")
    left.set_xscale("log")
    left.set_xlabel("virtual time since start (hours, log)")
    left.set_ylabel("validation loss")
    left.set_title("loss vs virtual time (median seed per variant)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    spread = [o.time_or(c.horizon_s) for runs in c.outcomes.values() for o in runs]
    if spread and max(spread) > 20 * max(min(spread), 1.0):
        right.set_yscale("log")
    right.axhline(c.horizon_s / 3600, color="r", lw=0.8, ls=":", label="horizon (censored)")
    right.set_ylabel("virtual hours to target")
    right.set_title(f"time to target, {c.seeds} seeds")
    right.tick_params(axis="x", rotation=30)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
