"""The synchronous round driver, and starting or resuming a run (sync or async).

Every round, each site that is not parked trains from the same global adapter; the round ends
when all have answered, or at the quorum deadline once `quorum.min_clients` updates are in (the
rest are late: recorded, and merged into the next round for strategies that discount staleness).
The strategy aggregates the screened updates, one site evaluates, and a checkpoint is written.

Run directory `runs/<name>-<timestamp>/`: experiment.yaml (resolved), metrics.jsonl (one record
per client task, per aggregation and evaluation, the untrained baseline, resumes),
checkpoint/ (after every aggregation), final_adapter/ (peft format), data/ (partitions for sites
without their own data), transport/ (adapters by reference for local sites), plots.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossfl.atomic import atomic_write_text
from crossfl.errors import UserError
from crossfl.paths import runs_dir
from crossfl.server import checkpoint as ckpt
from crossfl.server.experiment import Experiment, local_path
from crossfl.server.report import print_report, write_plots
from crossfl.server.run_base import (
    Arrival, DriverBase, Pending, RunFailed, RunStopped, eval_task, model_path_for, train_task,
)
from crossfl.server.site_executors import OpenSite, image_records, open_sites
from crossfl.server.strategies import is_async as strategy_is_async
from crossfl.server.strategies.base import Update
from crossfl.server.telemetry import live_records
from crossfl.server.transport import TaskFns, Transport

__all__ = ["RoundDriver", "RunFailed", "RunStopped", "eval_task", "model_path_for", "resume_run",
           "run_experiment", "train_task"]


def new_run_dir(experiment: Experiment, exp_path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir() / f"{experiment.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = runs_dir() / f"{experiment.name}-{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    resolved = experiment.model_dump(mode="json")
    resolved["_source"] = str(exp_path)
    atomic_write_text(run_dir / "experiment.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return run_dir


def check_local_inputs(experiment: Experiment, handles: dict[str, OpenSite]) -> None:
    """Paths the server itself reads (or that local engines read) must exist here."""
    for name, handle in handles.items():
        if handle.kind != "local engine":
            continue
        own = experiment.site_entry(name).model_path
        field = f"sites[{name}].model_path" if own else "model.path"
        if not (Path(model_path_for(experiment, name)) / "config.json").is_file():
            raise UserError(f"no model at {own or experiment.model.path} (config.json missing)", field=field,
                            fix=f"build the demo model with `make model`, or point {field} at a checkpoint directory")
    validation = local_path(experiment.data.validation)
    if handles[experiment.eval_site].kind == "local engine" and not validation.is_file():
        raise UserError(f"no validation data at {experiment.data.validation}", field="data.validation",
                        fix="build the demo data with `make data`, or correct the path")


def site_data_paths(experiment: Experiment, run_dir: Path) -> dict[str, str]:
    """Site-local data: the site's own data_path, or a partition of data.train written here
    (kept from the first start when a run is resumed)."""
    paths = {s.name: s.data_path for s in experiment.sites if s.data_path}
    for s in experiment.sites:
        kept = run_dir / "data" / f"{s.name}.jsonl"
        if not s.data_path and kept.is_file():
            paths[s.name] = str(kept)
    need = [s.name for s in experiment.sites if s.name not in paths]
    if need:
        from crossfl.data.partition import write_partitions

        assert experiment.data.train is not None  # enforced by the schema
        train = local_path(experiment.data.train)
        if not train.is_file():
            raise UserError(f"no training data at {experiment.data.train}", field="data.train",
                            fix="build the demo data with `make data`, or correct the path")
        p = experiment.data.partition
        written = write_partitions(train, need, run_dir / "data", p.scheme, p.seed, p.alpha)
        paths.update({name: str(path) for name, path in written.items()})
    return paths


class RoundDriver(DriverBase):
    """Synchronous rounds with a quorum deadline, retries, parking and late updates."""

    driver_name = "sync"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late: list[Pending] = []  # tasks of earlier rounds still running

    def merge_late(self) -> bool:
        mode = self.exp.quorum.late_updates
        return self.strategy.name == "fedqueue" if mode == "auto" else mode == "next_round"

    def deadline_s(self) -> float | None:
        if self.exp.quorum.deadline_s is not None:
            return self.exp.quorum.deadline_s
        round_timeout = getattr(self.strategy, "round_timeout_s", None)
        return float(round_timeout()) if callable(round_timeout) else None

    def skip(self, rnd: int, site: str, reason: str) -> None:
        self.metrics.write({"kind": "skipped", "round": rnd, "site": site, "reason": reason,
                            "at_rel_s": self.state.elapsed()})

    def choose_sites(self, rnd: int) -> list[str]:
        busy = {p.site: p.rnd for p in self.late}
        active = []
        for name in self.handles:
            if name in busy:
                self.skip(rnd, name, f"still running its round {busy[name]} task")
            elif self.parking.is_parked(name, rnd):
                self.skip(rnd, name, f"parked until round {self.parking.parked_until[name]}")
            else:
                active.append(name)
        if not active and not self.late:  # every site parked: nothing else can make progress
            self.console.print(f"  [yellow]round {rnd}: every site is parked; re-admitting them all[/]")
            self.parking.parked_until.clear()
            active = list(self.handles)
        return active

    # -- one round --------------------------------------------------------------------------
    def train_round(self, rnd: int, progress: Progress, bar: Any) -> list[Update]:
        mine = [self.submit_train(name, rnd) for name in self.choose_sites(rnd)]
        progress.update(bar, total=len(mine))
        pending: list[Pending] = [*mine, *self.late]
        need = min(self.exp.quorum.min_clients or 1, len(mine))
        opened, deadline = time.time(), self.deadline_s()
        arrivals: list[Arrival] = []

        def accepted() -> int:
            return sum(1 for a in arrivals if a.update is not None and a.record["round"] == rnd)

        def finish(p: Pending, a: Arrival) -> None:
            if p.rnd != rnd:
                a.record.update(late=True, arrived_in_round=rnd)
                if a.update is not None and not self.merge_late():
                    a.record.update(status="late", reason=f"arrived after round {p.rnd} was aggregated")
                    a.update = None
            if a.update is None:
                self.settle(a, rnd)
            else:
                arrivals.append(a)
                loss = a.record.get("train_loss")
                progress.update(bar, description=f"round {rnd}/{self.exp.rounds} {p.site} loss {loss:.3f}")
            if p.rnd == rnd:
                progress.advance(bar)

        def waiting() -> bool:  # this round's tasks, or (every site busy) the first late one
            return any(p.rnd == rnd for p in pending) or bool(not mine and pending and not arrivals)

        while waiting():
            now = time.time()
            if deadline is not None and now >= opened + deadline and accepted() >= need and (mine or arrivals):
                break
            for p in [p for p in pending if now >= p.expires_at and not p.task.future.done()]:
                pending.remove(p)
                finish(p, self.arrival(p, now, timed_out=True))
            wakes = [p.expires_at for p in pending]
            if deadline is not None and now < opened + deadline:
                wakes.append(opened + deadline)
            futures = [p.task.future for p in pending]
            if not futures:
                break
            done, _ = wait(futures, timeout=max(0.05, min(wakes) - now), return_when=FIRST_COMPLETED)
            for p in [p for p in pending if p.task.future in done]:
                pending.remove(p)
                finish(p, self.arrival(p, time.time()))
        self.late = pending
        for p in pending:
            if p.rnd == rnd:
                self.console.print(f"  [yellow]round {rnd}: site {p.site} missed the "
                                   f"{deadline:.0f} s deadline; its update will be late[/]")
        self.screen_distances(arrivals)
        for a in arrivals:
            self.settle(a, rnd)
        updates = [a.update for a in arrivals if a.update is not None]
        current = sum(1 for u in updates if u.base_version == self.state.version)
        if not updates:
            raise RunFailed(f"round {rnd}: no site returned an update")
        if current < need:
            raise RunFailed(f"round {rnd}: {current} usable update(s) of this round, quorum.min_clients is {need}")
        return updates

    def aggregate(self, updates: list[Update], rnd: int) -> None:
        s = self.state
        if s.global_flat is None:
            # Every site started from the same seeded fresh adapter: that is version 0.
            s.global_flat = self.initial_global()
        new = self.strategy.aggregate(s.global_flat, sorted(updates, key=lambda u: (u.site, u.base_version)),
                                      s.version)
        if new is not None:
            s.global_flat = new
            s.version += 1
        s.round = rnd
        s.updates += len(updates)
        self.metrics.write({"kind": "aggregation", "round": rnd, "version": s.version, "driver": "sync",
                            "sites": sorted(u.site for u in updates), "elapsed_s": s.elapsed(),
                            "staleness": {u.site: s.version - 1 - u.base_version for u in updates}})

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        exp = self.exp
        base = previous_baseline(self.state.run_dir) if self.resumed else None
        last = None
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=False) as progress:
            if base is None:
                base = self.evaluate("baseline", 0)
                self.console.print(f"untrained adapter: validation loss {base['val_loss']:.4f}")
            rounds_task = progress.add_task("rounds", total=exp.rounds, completed=self.state.round)
            try:
                for rnd in range(self.state.round + 1, exp.rounds + 1):
                    bar = progress.add_task(f"round {rnd}/{exp.rounds}", total=len(self.handles))
                    t0 = time.time()
                    updates = self.train_round(rnd, progress, bar)
                    self.aggregate(updates, rnd)
                    if rnd % exp.evaluate_every == 0 or rnd == exp.rounds:
                        last = self.evaluate("round", rnd)
                    self.checkpoint()
                    progress.remove_task(bar)
                    progress.advance(rounds_task)
                    loss = f"val loss {last['val_loss']:.4f}, " if last and last["round"] == rnd else ""
                    self.console.print(f"round {rnd}/{exp.rounds}: {len(updates)}/{len(self.handles)} updates, "
                                       f"{loss}{time.time() - t0:.1f} s, {self.bytes_moved / 1e6:.2f} MB moved so far")
                    self.after_checkpoint()
            finally:
                for p in self.late:
                    p.task.cancel()
        if last is None:  # resumed after the last round's aggregation, before its evaluation
            last = self.evaluate("round", self.state.round)
        self.save_final()
        return {"baseline": base, "final": last}


def previous_baseline(run_dir: Path) -> dict[str, Any] | None:
    return next((r for r in live_records(run_dir / "metrics.jsonl") if r.get("kind") == "baseline"), None)


def driver_class(experiment: Experiment) -> type[DriverBase]:
    """The driver the experiment asks for; `auto` follows the strategy's is_async."""
    from crossfl.server.async_driver import AsyncDriver

    name = experiment.strategy.name.strip()
    is_async = strategy_is_async(name)  # appfl:<Name> included
    if experiment.driver == "sync" and is_async:
        raise UserError(f"strategy {name} is asynchronous (one update per aggregation)", field="driver",
                        fix="use driver: async or auto, or a synchronous strategy")
    if experiment.driver == "async" or (experiment.driver == "auto" and is_async):
        return AsyncDriver
    if experiment.max_updates is not None:
        raise UserError(f"max_updates ends asynchronous runs; strategy {name} runs synchronous rounds",
                        field="max_updates", fix="set rounds instead, or driver: async")
    return RoundDriver


@dataclass
class Options:
    """How a run is driven, beyond its experiment file."""

    stop_after: int | None = None  # stop (RunStopped) once this round/aggregation is checkpointed
    fns: TaskFns = field(default_factory=TaskFns)  # the site functions (probes for benchmarks)
    transfer_client: Callable[[], Any] | None = None  # a globus_sdk.TransferClient factory


def run_experiment(experiment: Experiment, exp_path: Path, console: Console | None = None, *,
                   stop_after: int | None = None, fns: TaskFns | None = None,
                   transfer_client: Callable[[], Any] | None = None) -> Path:
    """Start a run in a new run directory. ``stop_after``: stop (RunStopped) once round (or
    aggregation) k is checkpointed, e.g. to fit a server job's walltime; resume continues."""
    console = console or Console()
    driver_class(experiment)  # a strategy/driver mismatch is the user's: say so before anything starts
    run_dir = new_run_dir(experiment, exp_path)
    console.print(f"run directory: {run_dir}")
    _drive(experiment, run_dir, console, None, Options(stop_after, fns or TaskFns(), transfer_client))
    return run_dir


def load_run_experiment(run_dir: Path) -> Experiment:
    import yaml

    from crossfl.server.experiment import validation_error

    path = run_dir / "experiment.yaml"
    if not path.is_file():
        raise UserError("not a run directory (no experiment.yaml)", file=run_dir, fix="give a directory under runs/")
    raw = yaml.safe_load(path.read_text()) or {}
    raw = {k: v for k, v in raw.items() if not str(k).startswith("_")}
    try:
        return Experiment.model_validate(raw)
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise validation_error(exc, path, raw) from None
        raise


def resume_run(run_dir: Path, console: Console | None = None, *, stop_after: int | None = None,
               fns: TaskFns | None = None, transfer_client: Callable[[], Any] | None = None) -> Path:
    """Continue a killed or stopped run in its own directory, from its last checkpoint."""
    console = console or Console()
    ckpt_dir = run_dir / "checkpoint"
    if ckpt.is_finished(ckpt_dir):
        console.print(f"run {run_dir.name} already finished; nothing to resume "
                      f"(final adapter in {run_dir / 'final_adapter'})")
        return run_dir
    experiment = load_run_experiment(run_dir)
    checkpoint = ckpt.load(ckpt_dir)
    if checkpoint is not None and checkpoint.strategy_name != experiment.strategy.name:
        raise UserError(f"checkpoint was written by strategy {checkpoint.strategy_name}", file=run_dir,
                        field="strategy.name", fix="resume with the run's own experiment.yaml unchanged")
    where = f"after round {checkpoint.round}" if checkpoint else "from the start (no aggregation was checkpointed)"
    console.print(f"resuming {run_dir.name} {where}")
    _drive(experiment, run_dir, console, checkpoint, Options(stop_after, fns or TaskFns(), transfer_client),
           resuming=True)
    return run_dir


def _drive(experiment: Experiment, run_dir: Path, console: Console, checkpoint: ckpt.Checkpoint | None,
           options: Options, resuming: bool = False) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with contextlib.ExitStack() as stack:
            handles = open_sites(experiment.sites, run_dir / "engines", stack)
            for name, h in handles.items():
                console.print(f"site {name}: {h.entry.site} via {h.kind} ({h.endpoint})")
            atomic_write_text(run_dir / "site_images.json", json.dumps(image_records(handles), indent=2))
            check_local_inputs(experiment, handles)
            data_paths = site_data_paths(experiment, run_dir)
            local = {n for n, h in handles.items() if h.kind == "local engine"}
            transport = Transport(experiment, run_dir, local, fns=options.fns,
                                  **({"transfer_client": options.transfer_client} if options.transfer_client else {}))
            driver = driver_class(experiment)(experiment, run_dir, handles, data_paths, console,
                                              transport=transport, stop_after=options.stop_after)
            if checkpoint is not None:
                driver.restore(checkpoint)
            elif resuming:  # nothing was aggregated: start over, leaving the earlier records aside
                driver.metrics.write({"kind": "resume", "round": 0, "version": 0, "metrics_bytes": 0,
                                      "at": time.time(), "elapsed_s": 0.0})
            try:
                outcome = driver.run()
            except (KeyboardInterrupt, RunStopped):
                console.print(f"checkpoint after round {driver.state.round} kept; continue with "
                              f"`crossfl resume {run_dir}`")
                raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):
            write_plots(run_dir)
    print_report(run_dir, console)
    base, final = outcome["baseline"]["val_loss"], outcome["final"]["val_loss"]
    console.print(f"validation loss: untrained {base:.4f} -> final {final:.4f} "
                  f"({(base - final) / base:+.1%} lower)" if base else "")
    console.print(f"plots, metrics and final adapter in {run_dir}  (host {socket.gethostname()})")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
