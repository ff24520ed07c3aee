"""A run from start to end: new or resumed, its directory, signals, and its engine processes.

``run_experiment`` and ``resume_run`` go the same way:

1. reap what dead runs left running (``reaper``);
2. plan the experiment (``plan``): every check passes before anything is written or started;
3. the run directory, absolute whatever way the run was named: ``runs/<name>-<timestamp>/``
   holds experiment.yaml (resolved), metrics.jsonl (``records``), checkpoint/ (generations
   after every aggregation: ``checkpoint``), final_adapter/ (peft format), data/ (partitions
   for sites without their own data), transport/ (adapters by reference for local sites),
   engines/ (the local engines' files), run.lock + run.owner.json and processes.json (while
   it runs), site_images.json and plots. One process holds it at a time (``run_lock``); a
   resume first clears what a killed writer left half-written (``atomic.sweep_tmp``);
4. the run's processes recorded and watched, the sites opened, the driver run;
5. engines shut down, each within ``ENGINE_SHUTDOWN_S`` (one that does not answer is ended
   with its processes), whatever is left of them ended, plots and the report.

SIGINT (Ctrl-C: the terminal sends it to the whole foreground process group; the local
engines run in process groups of their own, so only the server gets it), SIGTERM (a batch job
at its walltime) and SIGHUP (the terminal closed) stop a run the same way, once: while it
starts or runs, it stops where it is, shuts its sites down and exits 130 with the `crossfl
resume` hint (its last checkpoint is kept); once the run has finished, or while it shuts down,
a signal is noted and nothing is cut short. A full disk ends the run in one line with the
last good checkpoint kept and the resume command.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console

from crossfl.atomic import atomic_write_text, sweep_tmp
from crossfl.endpoints import LocalEngineExecutor
from crossfl.errors import UserError
from crossfl.paths import runs_dir
from crossfl.server import checkpoint as ckpt
from crossfl.server import reaper
from crossfl.server.async_driver import AsyncDriver
from crossfl.server.driver_base import DriverBase, RunFailed, RunStopped
from crossfl.server.experiment import Experiment, validation_error
from crossfl.server.plan import RunPlan, plan_run
from crossfl.server.report import print_report, resume_hint, write_plots
from crossfl.server.run_lock import RunLock
from crossfl.server.site_executors import OpenSite, open_site
from crossfl.server.sync_driver import RoundDriver
from crossfl.server.transport import TaskFns, Transport, transfer_client_from_env
from crossfl.yamlio import load_mapping

__all__ = [
    "DRIVERS",
    "Interrupted",
    "Options",
    "RunFailed",
    "RunStopped",
    "resume_run",
    "run_experiment",
]

DRIVERS: dict[str, type[DriverBase]] = {"sync": RoundDriver, "async": AsyncDriver}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ENGINE_SHUTDOWN_S = 60.0  # a site whose shutdown has not returned by then: its processes ended


@dataclass
class Options:
    """How a run is driven, beyond its experiment file."""

    stop_after: int | None = None  # stop (RunStopped) once this round/aggregation is checkpointed
    fns: TaskFns = field(default_factory=TaskFns)  # the site functions (probes for benchmarks)
    transfer_client: Callable[[], Any] | None = None  # a globus_sdk.TransferClient factory


# ---------------------------------------------------------------------------- signals


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived while the run was starting or running."""


class Signals:
    """SIGINT, SIGTERM and SIGHUP for the length of a run. While ``armed`` a signal interrupts
    the run (once); otherwise it is only noted, so a shutdown in progress is never cut short
    (it is bounded instead: ``ENGINE_SHUTDOWN_S``)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self._armed:
            self._armed = False
            raise Interrupted(signal.Signals(signum).name)

    def __enter__(self) -> Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self._armed = True
        try:
            self._raise_if_received()
            yield
        finally:
            self._armed = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within ``armed``: a step that must not be cut in two (an engine started, but not yet
        registered for shutdown). A signal during it interrupts the run right after it."""
        was, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = was
        self._raise_if_received()

    def _raise_if_received(self) -> None:
        if self._armed and self.received is not None:  # it came while it could not interrupt
            self._armed = False
            raise Interrupted(signal.Signals(self.received).name)


# ---------------------------------------------------------------------------- processes


class RunProcesses:
    """The run's process record (``reaper``), kept current while the run lives, and its
    watchdog. ``close`` ends what is left of the engines and removes the record."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        server = reaper.ProcessRef.of(os.getpid(), "server")
        assert server is not None
        self.record = reaper.ProcessRecord(server=server)
        self.record.save(run_dir)
        self.watchdog = reaper.start_watchdog(run_dir)
        self.record.watchdog = reaper.ProcessRef.of(self.watchdog.pid, "watchdog")
        self.record.save(run_dir)
        self._engines: list[LocalEngineExecutor] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="crossfl processes", daemon=True)
        self._thread.start()

    def opened(self, handle: OpenSite) -> None:
        engine = getattr(handle.executor, "inner", handle.executor)  # an MPI site's, wrapped
        if isinstance(engine, LocalEngineExecutor):
            with self._lock:
                self._engines.append(engine)
            self.refresh()

    def refresh(self) -> None:
        """Record engine processes that started since the last look (a worker pool starts a
        moment after its engine)."""
        with self._lock:
            known = {ref.pid for ref in self.record.engines}
            new = [
                reaper.ProcessRef.of(pid, role, engine.site)
                for engine in self._engines
                for role, pid in engine.processes()
                if pid not in known
            ]
            if any(new):
                self.record.engines.extend(ref for ref in new if ref is not None)
                self.record.save(self.run_dir)

    def end_site(self, site: str) -> int:
        """End the recorded processes of one site's engine (and their descendants)."""
        with contextlib.suppress(Exception):
            self.refresh()
        with self._lock:
            refs = [ref for ref in self.record.engines if ref.site == site]
        live = [p for p in (ref.find() for ref in refs) if p is not None]
        reaper.end_processes(live)
        return len(live)

    def _follow(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):
                self.refresh()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        reaper.end_recorded(self.record)
        (self.run_dir / reaper.RECORD).unlink(missing_ok=True)
        self.watchdog.terminate()
        self.watchdog.wait()


# ---------------------------------------------------------------------------- the run directory


def new_run_dir(experiment: Experiment, source: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while True:
        run_dir = runs_dir() / (f"{experiment.name}-{stamp}" + (f"-{suffix}" if suffix > 1 else ""))
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            suffix += 1
    resolved = experiment.model_dump(mode="json")
    resolved["_source"] = str(source)
    atomic_write_text(run_dir / "experiment.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return run_dir


def run_directory(ref: Path) -> Path:
    """A run directory however it was named (relative, a symlink, a trailing slash): absolute,
    so every path handed to a site from it is absolute too."""
    return Path(ref).resolve()


def load_run_experiment(run_dir: Path) -> Experiment:
    path = run_dir / "experiment.yaml"
    if not path.is_file():
        raise UserError(
            "not a run directory (no experiment.yaml)",
            file=run_dir,
            fix="give a directory under runs/",
        )
    raw = {k: v for k, v in load_mapping(path).items() if not str(k).startswith("_")}
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, path, raw) from None


def site_data_paths(plan: RunPlan, run_dir: Path) -> dict[str, str]:
    """Each site's training data: its own, or its partition of data.train in <run>/data
    (written at the first start, kept when the run is resumed)."""
    paths = {name: s.data_path for name, s in plan.sites.items() if s.data_path}
    need = []
    for name in plan.sites:
        kept = run_dir / "data" / f"{name}.jsonl"
        if name not in paths:
            if kept.is_file():
                paths[name] = str(kept)
            else:
                need.append(name)
    if need:
        from crossfl.data.partition import write_partitions

        assert plan.train_path is not None  # checked by the plan
        p = plan.experiment.data.partition
        written = write_partitions(
            plan.train_path, need, run_dir / "data", p.scheme, p.seed, p.alpha
        )
        paths.update({name: str(path) for name, path in written.items()})
    return paths


# ---------------------------------------------------------------------------- start, resume


def run_experiment(
    experiment: Experiment,
    source: Path,
    console: Console | None = None,
    *,
    stop_after: int | None = None,
    fns: TaskFns | None = None,
    transfer_client: Callable[[], Any] | None = None,
) -> Path:
    """Start a run in a new run directory. ``stop_after``: stop (RunStopped) once round (or
    aggregation) k is checkpointed, e.g. to fit a server job's walltime; resume continues."""
    console = console or Console()
    with Signals() as signals, contextlib.ExitStack() as held:
        with signals.armed():
            reap_dead_runs(console)
            plan = plan_run(experiment, source)
            run_dir = new_run_dir(experiment, source)
            held.enter_context(RunLock(run_dir))
        console.print(f"run directory: {run_dir}", soft_wrap=True)
        _drive(
            plan,
            run_dir,
            console,
            None,
            Options(stop_after, fns or TaskFns(), transfer_client),
            signals,
        )
    return run_dir


def resume_run(
    run_dir: Path,
    console: Console | None = None,
    *,
    stop_after: int | None = None,
    from_round: int | None = None,
    fns: TaskFns | None = None,
    transfer_client: Callable[[], Any] | None = None,
) -> Path:
    """Continue a killed or stopped run in its own directory, from its last checkpoint (or
    the kept generation of round ``from_round``: what came after it is set aside)."""
    console = console or Console()
    run_dir = run_directory(run_dir)
    with Signals() as signals, contextlib.ExitStack() as held:
        with signals.armed():
            reap_dead_runs(console)
            experiment = load_run_experiment(run_dir)  # a run directory, before it is locked
            lock = held.enter_context(RunLock(run_dir))
            if lock.previous is not None:
                console.print(
                    f"[yellow]run {run_dir.name}: {lock.previous.describe()} had ended "
                    f"without releasing it; taken over[/]"
                )
            for leftover in sweep_tmp(run_dir):
                console.print(f"removed {leftover.relative_to(run_dir)} (left half-written)")
            ckpt_dir = run_dir / "checkpoint"
            if from_round is not None:
                moved = ckpt.rewind(ckpt_dir, from_round, aside=[run_dir / "final_adapter"])
                if moved is not None:
                    console.print(f"what came after round {from_round} is kept in {moved}")
            elif ckpt.is_finished(ckpt_dir):
                console.print(
                    f"run {run_dir.name} already finished; nothing to resume "
                    f"(final adapter in {run_dir / 'final_adapter'})"
                )
                return run_dir
            checkpoint = ckpt.load(ckpt_dir)
            if checkpoint is not None and checkpoint.strategy_name != experiment.strategy.name:
                raise UserError(
                    f"checkpoint was written by strategy {checkpoint.strategy_name}",
                    file=run_dir,
                    field="strategy.name",
                    fix="resume with the run's own experiment.yaml unchanged",
                )
            plan = plan_run(experiment, run_dir / "experiment.yaml", kept_data=run_dir / "data")
        where = (
            f"after round {checkpoint.round}"
            if checkpoint
            else "from the start (no aggregation was checkpointed)"
        )
        console.print(f"resuming {run_dir.name} {where}")
        _drive(
            plan,
            run_dir,
            console,
            checkpoint,
            Options(stop_after, fns or TaskFns(), transfer_client),
            signals,
            resuming=True,
        )
    return run_dir


def reap_dead_runs(console: Console) -> None:
    for name, count in reaper.reap_dead_runs(runs_dir()).items():
        console.print(
            f"[yellow]run {name} had ended without shutting its engines down; "
            f"ended {count} of its processes[/]"
        )


def close_site(name: str, executor: Any, processes: RunProcesses, console: Console) -> None:
    """Shut a site down within ``ENGINE_SHUTDOWN_S``. Tasks not yet sent are cancelled; the
    server does not wait for remote tasks already registered (the Globus Compute service
    cannot cancel them; their results are dropped). A local engine that does not answer its
    shutdown (its interchange gone, say: Parsl's scale-in then waits for a reply forever) is
    ended with its processes, and the shutdown left behind."""
    done = threading.Event()
    failed: list[BaseException] = []

    def close() -> None:
        try:
            executor.shutdown(wait=False, cancel_futures=True)
        except Exception as exc:
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=close, name=f"crossfl shutdown {name}", daemon=True).start()
    if not done.wait(ENGINE_SHUTDOWN_S):
        ended = processes.end_site(name)
        what = f"ended its {ended} process(es)" if ended else "left it behind"
        console.print(
            f"[yellow]site {name}: its engine did not shut down within "
            f"{ENGINE_SHUTDOWN_S:.0f} s; {what}[/]"
        )
        done.wait(reaper.GRACE_S)
    if failed:
        console.print(f"[yellow]site {name}: shutting down: {failed[0]}[/]")


def _drive(
    plan: RunPlan,
    run_dir: Path,
    console: Console,
    checkpoint: ckpt.Checkpoint | None,
    options: Options,
    signals: Signals,
    resuming: bool = False,
) -> None:
    try:
        with contextlib.ExitStack() as stack:  # unwound with the signals disarmed
            processes = RunProcesses(run_dir)
            stack.callback(processes.close)  # last: after every engine's own shutdown
            with signals.armed():
                handles: dict[str, OpenSite] = {}
                for name, site in plan.sites.items():
                    with signals.deferred():  # started and registered for shutdown, or neither
                        handles[name] = h = open_site(site, run_dir / "engines")
                        stack.callback(close_site, name, h.executor, processes, console)
                        processes.opened(h)
                    console.print(f"site {name}: {h.site.catalog.name} via {h.kind} ({h.endpoint})")
                atomic_write_text(
                    run_dir / "site_images.json",
                    json.dumps({n: s.image for n, s in plan.sites.items()}, indent=2),
                )
                transport = Transport(
                    plan, run_dir, options.transfer_client or transfer_client_from_env, options.fns
                )
                driver = DRIVERS[plan.driver](
                    plan,
                    run_dir,
                    handles,
                    site_data_paths(plan, run_dir),
                    console,
                    transport=transport,
                    stop_after=options.stop_after,
                )
                if resuming:
                    driver.restore(checkpoint)
                driver.run()
    except (Interrupted, RunStopped) as exc:
        if not (isinstance(exc, Interrupted) and ckpt.is_finished(run_dir / "checkpoint")):
            with contextlib.suppress(OSError):  # a terminal that hung up takes no more lines
                console.print(resume_hint(run_dir), soft_wrap=True)
            raise
        # else the run had finished: the signal came as it returned
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(
            f"disk full ({exc.strerror}: {exc.filename or 'a file of the run'}); "
            f"{resume_hint(run_dir)} once there is space",
            file=run_dir,
        ) from None
    finally:
        with contextlib.suppress(Exception):
            write_plots(run_dir)
    print_report(run_dir, console)  # its last line: what the run learned, and by how much
    console.print(
        f"plots, metrics and final adapter in {run_dir}  (host {socket.gethostname()})",
        soft_wrap=True,
    )
    if signals.received is not None:
        console.print(
            f"[yellow]{signal.Signals(signals.received).name} came after the run had finished; "
            f"it finished all the same[/]"
        )
