"""A comparison's replays as jobs for worker processes, each outcome kept on disk by a key
holding everything it depends on (``ReplayJob.key``), so an interrupted comparison resumes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from crossfl.server.experiment import Experiment
from crossfl.simulate.cache import replay_version
from crossfl.simulate.outcome import ReplayOutcome, read_outcome
from crossfl.simulate.scenario import Scenario

COMPARE_VERSION = 1  # raise when what an outcome means changes


@dataclass(frozen=True)
class ReplayJob:
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


def run_job(job: ReplayJob) -> dict[str, Any]:
    """A replay in this (worker) process; its outcome as plain data."""
    from crossfl.paths import runs_dir
    from crossfl.simulate.cache import ResultCache
    from crossfl.simulate.replay import CACHE_DIR, check_replayable, replay

    t0 = time.perf_counter()
    experiment = Experiment.model_validate(job.experiment)
    plan_key = json.dumps(job.experiment, sort_keys=True, default=str)
    if plan_key not in _PLANS:
        # planning renders the sites into build/sites: one worker at a time
        lock = runs_dir() / CACHE_DIR / "plan.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            try:
                _PLANS[plan_key] = check_replayable(
                    experiment, Path(job.source), job.task_timeout_s
                )
            finally:
                fcntl.flock(held, fcntl.LOCK_UN)
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


def _outcome(data: dict[str, Any]) -> ReplayOutcome:
    data = dict(data)
    data["curve"] = [tuple(p) for p in data["curve"]]
    return ReplayOutcome(**data)


class Runner:
    """Runs jobs over worker processes, keeps every outcome, prints progress."""

    def __init__(self, console: Console, workers: int, store: Path) -> None:
        self.console, self.workers, self.store = console, max(1, workers), store
        self.replays = 0  # run here, not read from the store
        self.replay_wall_s = 0.0
        self.t0 = time.monotonic()

    def kept(self, job: ReplayJob) -> ReplayOutcome | None:
        file = self.store / f"{job.key}.json"
        return _outcome(json.loads(file.read_text())) if file.is_file() else None

    def keep(self, job: ReplayJob, data: dict[str, Any]) -> ReplayOutcome:
        from crossfl.atomic import atomic_write_text

        atomic_write_text(self.store / f"{job.key}.json", json.dumps(data))
        return _outcome(data)

    def run(self, jobs: list[ReplayJob], what: str) -> list[ReplayOutcome]:
        results: dict[int, ReplayOutcome] = {}
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
        self, jobs: list[ReplayJob], todo: list[int], results: dict[int, ReplayOutcome], what: str
    ) -> None:
        start, n = time.monotonic(), len(todo)
        self.console.print(f"{what}: {n} replay(s) to run", highlight=False)

        def progress(k: int, i: int) -> None:
            o = results[i]
            spent = time.monotonic() - start
            eta = spent / k * (n - k)
            said = (
                f"final loss {o.final_loss:.4f}"
                if jobs[i].phase == "reference"
                else _fmt_outcome(o)
            )
            self.console.print(progress_line(k, n, o, said, eta), highlight=False)

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

    def _count(self, o: ReplayOutcome) -> None:
        self.replays += 1
        self.replay_wall_s += o.wall_s


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def progress_line(k: int, n: int, o: ReplayOutcome, said: str, eta_s: float) -> str:
    """One replay done: within 80 columns (the phase is said once, above the lines)."""
    return f"  {k}/{n} {o.variant} seed {o.seed}: {said}; ~{_clock(eta_s)} left"


def _fmt_outcome(o: ReplayOutcome) -> str:
    """At most 25 characters, so a progress line fits 80 columns."""
    if o.reached and o.time_s is not None:
        return f"target at {o.time_s / 3600:.2f} h"
    return f"{o.end} at {o.stopped_s / 3600:.2f} h, no target"
