"""`crossfl simulate`: one experiment replayed in virtual time against a queue scenario.

The real round driver and strategy of the experiment, the real client training on this
machine (results reused where a task's inputs are identical: ``ResultCache``), and per site a
``SimulatedSiteExecutor`` whose pilots wait in their facility's queue, idle out and hit their
walltime in virtual time (``VirtualClock``). Evaluation is the experimenter's measurement: it
runs for real at no virtual cost (``InstantExecutor``). The run directory is an ordinary one
(metrics.jsonl with virtual times, plots, summary) plus ``pilot`` records and one
``simulation`` record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console

from crossfl.atomic import atomic_write_text
from crossfl.clock import HorizonReached, VirtualClock
from crossfl.errors import UserError
from crossfl.paths import runs_dir
from crossfl.server.experiment import Experiment, with_changes
from crossfl.server.lifecycle import DRIVERS, new_run_dir, site_data_paths
from crossfl.server.plan import RunPlan, plan_run
from crossfl.server.records import PilotRecord, SimulationRecord
from crossfl.server.report import print_report, write_plots
from crossfl.server.site_executors import OpenSite
from crossfl.server.telemetry import MetricsLog
from crossfl.server.transport import Transport
from crossfl.simulate.cache import ResultCache, file_facts
from crossfl.simulate.executor import InstantExecutor, simulated_sites
from crossfl.simulate.scenario import Scenario

CACHE_DIR = ".simulate-cache"


@dataclass(frozen=True)
class Replay:
    """What one replay left: its run directory and virtual totals."""

    run_dir: Path
    seed: int
    virtual_s: float
    node_hours: float
    end: str = "finished"  # or "horizon": cut at the horizon (censored)


def check_replayable(
    experiment: Experiment, source: Path, task_timeout_s: float | None = None
) -> RunPlan:
    """The experiment's plan, if it can be replayed here: every site trains on this machine
    (training is real) and adapters travel inside the tasks (a result by reference names a
    file of one run, which no other replay could reuse). A task's timeout counts its queue
    wait in virtual time, as at a facility: ``task_timeout_s`` replaces the experiment's."""
    for entry in experiment.sites:
        mode = experiment.transport_mode(entry)
        if mode in ("shared_fs", "globus_transfer"):
            raise UserError(
                f"adapters travel by reference ({mode})",
                file=source,
                field=f"sites[{entry.name}].transport.mode",
                fix="use transport.mode auto or inline in a replay",
            )
    update: dict[str, object] = {
        "transport": experiment.transport.model_copy(update={"mode": "inline"})
    }
    if task_timeout_s is not None:
        update["task_timeout_s"] = task_timeout_s
    experiment = with_changes(experiment, source, **update)
    plan = plan_run(experiment, source)
    for name, site in plan.sites.items():
        if not site.runs_here:
            raise UserError(
                f"site {name} ({site.catalog.name}) trains at a facility; a replay "
                "trains every site on this machine",
                file=source,
                field=f"sites[{name}].site",
                fix="replay an experiment of local sites (e.g. local-demo) whose "
                "names match the scenario's site profiles",
            )
    return plan


def data_dir(plan: RunPlan) -> Path:
    """One copy of the partitioned training data per base experiment: the same for every
    variant, seed and invocation (identical tasks then name identical files, so the result
    cache can reuse them). Keyed by what the partition depends on, not by the experiment's
    name."""
    e = plan.experiment
    train = plan.train_path
    facts = {
        "train": str(train),
        "stat": list(file_facts(str(train))) if train is not None else None,
        "partition": e.data.partition.model_dump(),
        "sites": sorted(name for name, s in plan.sites.items() if s.data_path is None),
    }
    key = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    return runs_dir() / CACHE_DIR / f"data-{key[:16]}"


def replay(
    plan: RunPlan,
    source: Path,
    scenario: Scenario,
    scenario_file: Path,
    seed: int,
    console: Console,
    cache: ResultCache | None = None,
    *,
    run_dir: Path | None = None,
    horizon_s: float | None = None,
    light: bool = False,
) -> Replay:
    """Replay ``plan`` once with queue draws seeded by ``seed``; the run directory it left.

    ``horizon_s``: the run is cut when virtual time reaches it (``end: horizon``).
    ``light`` (comparisons): no checkpoints, final adapter or plots, only metrics.jsonl."""
    experiment = plan.experiment
    cache = cache or ResultCache(runs_dir() / CACHE_DIR / "results")
    clock = VirtualClock(horizon=horizon_s)
    if run_dir is None:
        run_dir = new_run_dir(experiment, source)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        resolved = {**experiment.model_dump(mode="json"), "_source": str(source)}
        atomic_write_text(run_dir / "experiment.yaml", yaml.safe_dump(resolved, sort_keys=False))
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    data_paths = site_data_paths(plan, data_dir(plan))
    shapes = {
        e.name: (e.nodes or e.user_options.get("nodes_per_block"), e.user_options.get("walltime"))
        for e in experiment.sites
    }
    executors = simulated_sites(
        scenario,
        [e.name for e in experiment.sites],
        clock,
        seed=seed,
        cache=cache,
        shapes=shapes,
        on_record=lambda r: metrics.write(PilotRecord(**r)),
    )
    handles = {
        name: OpenSite(plan.sites[name], ex, f"simulated:{ex.profile.name}", control=ex)
        for name, ex in executors.items()
    }
    evaluation = OpenSite(plan.sites[experiment.eval_site], InstantExecutor(cache), "evaluation")
    driver = DRIVERS[plan.driver](
        plan,
        run_dir,
        handles,
        data_paths,
        console,
        transport=Transport(plan, run_dir),
        clock=clock,
        eval_site=evaluation,
        keep_files=not light,
    )
    end = "finished"
    try:
        driver.run()
    except HorizonReached:
        end = "horizon"
    finally:
        for ex in executors.values():
            ex.shutdown()  # writes the pilots still held
    node_hours = sum(ex.node_hours() for ex in executors.values())
    metrics.write(
        SimulationRecord(
            scenario=scenario.name,
            scenario_file=str(scenario_file),
            seed=seed,
            profiles={name: ex.profile.name for name, ex in executors.items()},
            virtual_s=clock.now(),
            node_hours=node_hours,
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            events=clock.events_run,
            end=end,
            horizon_s=horizon_s,
        )
    )
    atomic_write_text(
        run_dir / "site_images.json", json.dumps({n: "simulated" for n in plan.sites}, indent=2)
    )
    if not light:
        write_plots(run_dir)
    return Replay(run_dir, seed, clock.now(), node_hours, end)


def replay_seeds(
    experiment: Experiment,
    source: Path,
    scenario: Scenario,
    scenario_file: Path,
    seeds: int,
    console: Console,
    task_timeout_s: float | None = None,
) -> list[Replay]:
    """``seeds`` replays (queue seeds 0..N-1), one result cache for all; the last one's
    report is printed."""
    plan = check_replayable(experiment, source, task_timeout_s)
    cache = ResultCache(runs_dir() / CACHE_DIR / "results")
    done = []
    for seed in range(seeds):
        console.print(
            f"[bold]replay {seed + 1}/{seeds}[/] (queue seed {seed}) of "
            f"{experiment.name} against {scenario.name}"
        )
        done.append(replay(plan, source, scenario, scenario_file, seed, console, cache))
    print_report(done[-1].run_dir, console)
    return done
