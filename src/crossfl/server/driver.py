"""The synchronous round driver: every site trains from the same global adapter, the strategy
aggregates what came back, one site evaluates, and the run directory records it all.

Run directory `runs/<name>-<timestamp>/`: experiment.yaml (resolved), metrics.jsonl (one record
per client task, per round, and the untrained baseline), checkpoint/ (after every aggregation),
final_adapter/ (peft format), data/ (partitions for sites without their own data), plots.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crossfl.client import tasks as client_tasks
from crossfl.client.adapter_io import adapter_from_bytes, adapter_to_bytes
from crossfl.endpoints import failure_summary
from crossfl.errors import UserError
from crossfl.paths import runs_dir
from crossfl.server.experiment import Experiment, SiteEntry, local_path
from crossfl.server.flat import FlatSpec
from crossfl.server.report import print_report, write_plots
from crossfl.server.site_executors import OpenSite, open_sites
from crossfl.server.strategies import get_strategy
from crossfl.server.strategies.base import ClientPlan, Update
from crossfl.atomic import atomic_write_bytes, atomic_write_text
from crossfl.server.telemetry import MetricsLog


class RunFailed(Exception):
    """The run cannot continue (e.g. no site returned an update); its directory stays."""


@dataclass
class RunState:
    run_dir: Path
    experiment: Experiment
    started: float = field(default_factory=time.time)
    version: int = 0
    spec: FlatSpec | None = None
    global_flat: Any = None  # torch.Tensor once known

    def elapsed(self) -> float:
        return time.time() - self.started


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
    if any(h.kind == "local engine" for h in handles.values()):
        model = local_path(experiment.model.path)
        if not (model / "config.json").is_file():
            raise UserError(f"no model at {experiment.model.path} (config.json missing)", field="model.path",
                            fix="build the demo model with `make model`, or point model.path at a checkpoint directory")
    validation = local_path(experiment.data.validation)
    if handles[experiment.eval_site].kind == "local engine" and not validation.is_file():
        raise UserError(f"no validation data at {experiment.data.validation}", field="data.validation",
                        fix="build the demo data with `make data`, or correct the path")


def site_data_paths(experiment: Experiment, run_dir: Path) -> dict[str, str]:
    """Site-local data: the site's own data_path, or a partition of data.train written here."""
    paths = {s.name: s.data_path for s in experiment.sites if s.data_path}
    need = [s.name for s in experiment.sites if not s.data_path]
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


def model_path_for(experiment: Experiment) -> str:
    path = Path(experiment.model.path).expanduser()
    return str(path if path.is_absolute() else local_path(experiment.model.path))


def train_task(experiment: Experiment, data_path: str, adapter: bytes | None, plan: ClientPlan,
               rnd: int) -> dict[str, Any]:
    t = experiment.training
    return {
        "model_path": model_path_for(experiment), "data_path": data_path, "adapter": adapter,
        "local_steps": plan.local_steps, "batch_size": t.batch_size, "lr": plan.lr,
        "max_length": t.max_length, "lora": experiment.lora.model_dump(), "dtype": experiment.model.dtype,
        "adapter_dtype": t.adapter_dtype, "seed": experiment.seed, "round": rnd,
        "torch_threads": t.torch_threads, "max_samples": t.max_samples,
    }


def eval_task(experiment: Experiment, adapter: bytes | None) -> dict[str, Any]:
    e = experiment.evaluation
    return {
        "model_path": model_path_for(experiment), "data_path": str(local_path(experiment.data.validation)),
        "adapter": adapter, "lora": experiment.lora.model_dump(), "batch_size": e.batch_size,
        "max_length": experiment.training.max_length, "dtype": experiment.model.dtype,
        "max_samples": e.max_samples, "generate_max_new_tokens": e.generate_max_new_tokens,
        "torch_threads": experiment.training.torch_threads,
    }


def task_record(rnd: int, site: str, submitted: float, received: float, started: float,
                result: dict[str, Any] | None, error: str | None, bytes_down: int) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": "task", "round": rnd, "site": site, "submitted_at": submitted,
                              "received_at": received, "submitted_rel_s": submitted - started,
                              "bytes_down": bytes_down, "status": "ok" if error is None else "failed"}
    if error is not None:
        record["error"] = error
        return record
    assert result is not None
    timings = result.get("timings", {})
    load_s, train_s, ser_s = (float(timings.get(k, 0.0)) for k in ("load_s", "train_s", "serialize_s"))
    worker_s = max(0.0, result["finished_at"] - result["started_at"])
    record.update({
        "train_loss": result["train_loss"], "first_loss": result.get("first_loss"),
        "num_samples": result["num_samples"], "steps": result.get("steps"),
        "load_s": load_s, "train_s": train_s, "serialize_s": ser_s,
        # queue/start: submit -> the function began on a worker (queue wait + worker start)
        "queue_s": max(0.0, result["started_at"] - submitted),
        "worker_s": worker_s,
        # transfer: the worker finished -> the server holds the unpacked result
        "transfer_s": max(0.0, received - result["finished_at"]) + ser_s,
        "bytes_up": len(result["adapter"]), "cache_hit": result.get("cache_hit"),
        "device": result.get("device"), "host": result.get("host"), "pid": result.get("pid"),
    })
    return record


def gather(futures: dict[str, Future], timeout_s: float, on_done: Any) -> None:
    """Wait for all futures (or the deadline), calling on_done(site, future, received_at)."""
    pending = {f: s for s, f in futures.items()}
    deadline = time.time() + timeout_s
    while pending:
        done, _ = wait(list(pending), timeout=max(0.0, deadline - time.time()), return_when=FIRST_COMPLETED)
        if not done:
            for fut, site in pending.items():
                fut.cancel()
                on_done(site, None, time.time())
            return
        for fut in done:
            on_done(pending.pop(fut), fut, time.time())


class RoundDriver:
    def __init__(self, experiment: Experiment, run_dir: Path, handles: dict[str, OpenSite],
                 data_paths: dict[str, str], console: Console) -> None:
        self.exp = experiment
        self.handles = handles
        self.data_paths = data_paths
        self.console = console
        self.state = RunState(run_dir, experiment)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.strategy = get_strategy(experiment.strategy.name, **experiment.strategy.kwargs)
        self.eval_site = handles[experiment.eval_site]

    # -- adapters ---------------------------------------------------------------------------
    def global_bytes(self) -> bytes | None:
        s = self.state
        if s.global_flat is None or s.spec is None:
            return None
        return adapter_to_bytes(s.spec.unflatten(s.global_flat), self.exp.training.adapter_dtype)

    def evaluate(self, label: str, rnd: int) -> dict[str, Any]:
        adapter = self.global_bytes()
        fut = self.eval_site.executor.submit(client_tasks.evaluate, eval_task(self.exp, adapter))
        try:
            result = fut.result(timeout=self.exp.task_timeout_s)
        except Exception as exc:
            raise RunFailed(f"evaluation on site {self.eval_site.entry.name} failed: {failure_summary(exc)}") from exc
        record = {"kind": label, "round": rnd, "val_loss": result["val_loss"],
                  "exact_match": result.get("exact_match", {}), "num_samples": result.get("num_samples"),
                  "elapsed_s": self.state.elapsed(), "strategy": self.exp.strategy.name,
                  "version": self.state.version}
        self.metrics.write(record)
        return record

    # -- one round --------------------------------------------------------------------------
    def train_round(self, rnd: int, progress: Progress, task_id: Any) -> list[Update]:
        default = ClientPlan(local_steps=self.exp.training.local_steps, lr=self.exp.training.lr)
        adapter = self.global_bytes()
        bytes_down = len(adapter) if adapter else 0
        futures: dict[str, Future] = {}
        submitted: dict[str, float] = {}
        plans: dict[str, ClientPlan] = {}
        for name, handle in self.handles.items():
            plans[name] = self.strategy.configure(name, self.state.version, default)
            submitted[name] = time.time()
            futures[name] = handle.executor.submit(
                client_tasks.train_round, train_task(self.exp, self.data_paths[name], adapter, plans[name], rnd))
        updates: list[Update] = []

        def on_done(site: str, fut: Future | None, received: float) -> None:
            result, error = None, None
            if fut is None:
                error = f"timed out after {self.exp.task_timeout_s:.0f} s"
            else:
                try:
                    result = fut.result()
                except Exception as exc:  # a failed site is recorded; the round goes on without it
                    error = failure_summary(exc)
            record = task_record(rnd, site, submitted[site], received, self.state.started, result, error, bytes_down)
            self.metrics.write(record)
            progress.advance(task_id)
            if error is not None:
                self.console.print(f"  [red]round {rnd}: site {site} failed:[/] {error}")
                return
            assert result is not None
            state_dict = adapter_from_bytes(result["adapter"])
            if self.state.spec is None:
                self.state.spec = FlatSpec.from_state(state_dict)
            updates.append(Update(site=site, params=self.state.spec.flatten(state_dict),
                                  num_samples=int(result["num_samples"]), base_version=self.state.version,
                                  local_steps=int(result.get("steps") or plans[site].local_steps),
                                  train_time_s=record["train_s"], queue_wait_s=record["queue_s"]))
            progress.update(task_id, description=f"round {rnd}/{self.exp.rounds} {site} loss {result['train_loss']:.3f}")

        gather(futures, self.exp.task_timeout_s, on_done)
        return updates

    def aggregate(self, updates: list[Update], rnd: int) -> None:
        if not updates:
            raise RunFailed(f"round {rnd}: no site returned an update")
        s = self.state
        if s.global_flat is None:
            # Every site started from the same seeded fresh adapter: that is version 0.
            s.global_flat = self.initial_global()
        new = self.strategy.aggregate(s.global_flat, sorted(updates, key=lambda u: u.site), s.version)
        if new is not None:
            s.global_flat = new
            s.version += 1
        self.checkpoint(rnd)

    def initial_global(self) -> Any:
        """Global version 0: the seeded fresh adapter every site started from."""
        from crossfl.client.train import fresh_adapter_from_shapes

        spec = self.state.spec
        assert spec is not None
        shapes = {k: tuple(shape) for k, shape in zip(spec.keys, spec.shapes)}
        return spec.flatten(fresh_adapter_from_shapes(shapes, self.exp.seed))

    def checkpoint(self, rnd: int) -> None:
        ckpt = self.state.run_dir / "checkpoint"
        adapter = self.global_bytes()
        if adapter is not None:
            atomic_write_bytes(ckpt / "global_adapter.safetensors", adapter)
        meta = {"round": rnd, "version": self.state.version, "elapsed_s": self.state.elapsed(),
                "strategy": self.exp.strategy.name}
        atomic_write_text(ckpt / "state.json", json.dumps(meta, indent=2))

    def save_final(self) -> Path:
        from peft import LoraConfig

        out = self.state.run_dir / "final_adapter"
        adapter = self.global_bytes()
        assert adapter is not None
        # peft's own on-disk layout, so PeftModel.from_pretrained(base, out) loads it.
        atomic_write_bytes(out / "adapter_model.safetensors", adapter)
        lora = self.exp.lora
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                            base_model_name_or_path=self.exp.model.path)
        config.save_pretrained(str(out))
        return out

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        exp = self.exp
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=False) as progress:
            base = self.evaluate("baseline", 0)
            self.console.print(f"untrained adapter: validation loss {base['val_loss']:.4f}")
            rounds_task = progress.add_task("rounds", total=exp.rounds)
            last = base
            for rnd in range(1, exp.rounds + 1):
                tasks_bar = progress.add_task(f"round {rnd}/{exp.rounds}", total=len(self.handles))
                t0 = time.time()
                updates = self.train_round(rnd, progress, tasks_bar)
                self.aggregate(updates, rnd)
                last = self.evaluate("round", rnd)
                progress.remove_task(tasks_bar)
                progress.advance(rounds_task)
                self.console.print(
                    f"round {rnd}/{exp.rounds}: {len(updates)}/{len(self.handles)} sites, "
                    f"val loss {last['val_loss']:.4f}, {time.time() - t0:.1f} s")
        self.save_final()
        return {"baseline": base, "final": last}


def run_experiment(experiment: Experiment, exp_path: Path, console: Console | None = None) -> Path:
    console = console or Console()
    run_dir = new_run_dir(experiment, exp_path)
    console.print(f"run directory: {run_dir}")
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with contextlib.ExitStack() as stack:
            handles = open_sites(experiment.sites, run_dir / "engines", stack)
            for name, h in handles.items():
                console.print(f"site {name}: {h.entry.site} via {h.kind} ({h.endpoint})")
            check_local_inputs(experiment, handles)
            data_paths = site_data_paths(experiment, run_dir)
            driver = RoundDriver(experiment, run_dir, handles, data_paths, console)
            outcome = driver.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        with contextlib.suppress(Exception):
            write_plots(run_dir)
    print_report(run_dir, console)
    base, final = outcome["baseline"]["val_loss"], outcome["final"]["val_loss"]
    console.print(f"validation loss: untrained {base:.4f} -> final {final:.4f} "
                  f"({(base - final) / base:+.1%} lower)" if base else "")
    console.print(f"plots, metrics and final adapter in {run_dir}  (host {socket.gethostname()})")
    return run_dir


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
