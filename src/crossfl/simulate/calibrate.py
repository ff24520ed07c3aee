"""Queue scenarios from the kit's own telemetry (``crossfl simulate --calibrate RUN...``).

Every run directory's metrics.jsonl holds one ``task`` record per client task (written
by the round server's ``task_record``): ``site``, ``status``, ``queue_s`` (last
submission -> the function began on a worker), ``load_s``, ``train_s``, ``steps``,
``transfer_s`` (worker finished -> the server holds the result) and ``cache_hit``
(True: the worker had the base model loaded already, i.e. a warm worker).

Per experiment site, over the tasks of all runs given:

- queue wait: a *cold* task (``cache_hit`` False) is the first on a fresh worker, so its
  ``queue_s`` includes the pilot's batch-queue wait, and the dispatch latency (submit ->
  the endpoint) that every task pays: that latency is the median ``queue_s`` of warm
  tasks, taken off each cold one (the scenario adds it back as ``transfer.down_s``, so it
  would otherwise count twice). A task that *timed out* waited at least its timeout less
  that latency: a right-censored wait (taken as a pilot that never started; a task that
  ran past its timeout is not told apart). A lognormal is fitted to both by maximum
  likelihood with the censoring (``scipy.stats.lognorm.fit`` on ``CensoredData``, location
  0). With fewer than ``min_samples`` waits (censored ones included), or none complete, no
  distribution is fitted: the median of the complete ones (else the longest censored
  bound) becomes a ``fixed`` wait, marked as an assumption.
  A site that also evaluates (the experiment's ``eval_site``) pays its cold start in
  the baseline evaluation, which is not a task record: its training tasks may all be
  warm (seen in the local demo), and then no wait is fitted for it.
- speed: ``seconds_per_step`` = median of ``train_s / steps``; ``load_cold_s`` and
  ``load_warm_s`` = medians of ``load_s`` over cold and warm tasks (no cold task: the
  largest ``load_s`` seen, the first task's data and adapter setup).
- transfer: ``down_s`` = median ``queue_s`` of warm tasks (dispatch to a running
  worker), ``up_s`` = median ``transfer_s``.

Facility and queue names come from the run's resolved experiment.yaml (the site
entry's catalog ``site`` and its ``user_options`` queue or qos), walltime and nodes too.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossfl.atomic import atomic_write_text
from crossfl.errors import UserError
from crossfl.server.records import TaskRecord
from crossfl.server.telemetry import live_records, of_kind
from crossfl.simulate.scenario import Scenario

MIN_SAMPLES = 5
WAIT_FLOOR_S = 1e-3  # ln(0) is undefined; a wait recorded as 0 counts as 1 ms
TIMED_OUT = re.compile(r"timed out after (\d+(?:\.\d+)?) s")  # driver_base.arrival's words


@dataclass
class SiteSamples:
    site: str
    facility: str
    queue: str
    runs: set[str] = field(default_factory=set)
    cold_queue_s: list[float] = field(default_factory=list)
    timed_out_s: list[float] = field(default_factory=list)  # waited at least this long
    warm_queue_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    cold_load_s: list[float] = field(default_factory=list)
    warm_load_s: list[float] = field(default_factory=list)
    transfer_s: list[float] = field(default_factory=list)
    walltime: str | None = None
    nodes: int | None = None
    tasks: int = 0


def lognormal_censored(waits: list[float], at_least: list[float]) -> tuple[float, float]:
    """(median_s, sigma) of the lognormal most likely to have given ``waits`` and waits
    known only to exceed ``at_least`` (maximum likelihood, location 0)."""
    from scipy import stats

    data = stats.CensoredData(
        uncensored=[max(WAIT_FLOOR_S, w) for w in waits],
        right=[max(WAIT_FLOOR_S, w) for w in at_least],
    )
    sigma, _loc, scale = stats.lognorm.fit(data, floc=0)
    return float(scale), float(sigma)


def _entries(run_dir: Path) -> dict[str, dict[str, Any]]:
    file = run_dir / "experiment.yaml"
    if not file.is_file():
        return {}
    raw = yaml.safe_load(file.read_text()) or {}
    return {str(e.get("name")): e for e in raw.get("sites") or [] if isinstance(e, dict)}


def collect(run_dirs: list[Path]) -> dict[str, SiteSamples]:
    samples: dict[str, SiteSamples] = {}
    for run_dir in run_dirs:
        metrics = run_dir / "metrics.jsonl"
        if not metrics.is_file():
            raise UserError(
                "no metrics.jsonl in this directory",
                file=run_dir,
                fix="pass run directories made by `crossfl run` (runs/NAME-STAMP)",
            )
        entries = _entries(run_dir)
        for rec in of_kind(live_records(metrics), TaskRecord):
            timed_out = TIMED_OUT.search(rec.error or "")
            if rec.status != "ok" and not timed_out:
                continue
            site = rec.site
            entry = entries.get(site, {})
            opts = entry.get("user_options") or {}
            s = samples.setdefault(
                site,
                SiteSamples(
                    site,
                    str(entry.get("site") or site),
                    str(opts.get("queue") or opts.get("qos") or "default"),
                ),
            )
            s.runs.add(run_dir.name)
            s.walltime = s.walltime or opts.get("walltime")
            s.nodes = s.nodes or entry.get("nodes") or opts.get("nodes_per_block")
            if timed_out:
                s.timed_out_s.append(float(timed_out.group(1)))
                continue
            s.tasks += 1
            warm = rec.cache_hit is True
            (s.warm_queue_s if warm else s.cold_queue_s).append(float(rec.queue_s or 0.0))
            (s.warm_load_s if warm else s.cold_load_s).append(float(rec.load_s or 0.0))
            steps = rec.steps or rec.local_steps
            if steps and rec.train_s is not None:
                s.step_s.append(float(rec.train_s) / int(steps))
            if rec.transfer_s is not None:
                s.transfer_s.append(float(rec.transfer_s))
    return samples


def _median(xs: list[float], default: float = 0.0) -> float:
    return float(statistics.median(xs)) if xs else default


def fit(run_dirs: list[Path], min_samples: int = MIN_SAMPLES) -> tuple[dict[str, Any], list[str]]:
    """The scenario (as YAML-ready data, validated) and one line per site saying what
    was fitted."""
    samples = collect(run_dirs)
    if not any(s.tasks for s in samples.values()):
        raise UserError(
            "no successful task records in these runs",
            file=", ".join(map(str, run_dirs)),
            fix="calibrate from runs that trained at least one round",
        )
    where = f"metrics.jsonl of {', '.join(sorted({r for s in samples.values() for r in s.runs}))}"
    facilities: dict[str, dict[str, Any]] = {}
    sites: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in sorted(samples):
        s = samples[name]
        latency = _median(s.warm_queue_s)  # every task's dispatch latency
        waits = [max(WAIT_FLOOR_S, w - latency) for w in s.cold_queue_s]
        censored = [max(WAIT_FLOOR_S, t - latency) for t in s.timed_out_s]
        cold, cut = len(waits), len(censored)
        counted = f"{cold} cold task(s)" + (f" and {cut} timed out (censored)" if cut else "")
        if cold + cut >= min_samples and cold >= 1:
            median, sigma = lognormal_censored(waits, censored)
            wait: dict[str, Any] = {
                "model": "lognormal",
                "median_s": round(median, 3),
                "sigma": round(sigma, 4),
                "source": f"maximum likelihood, right-censored, on {counted} of {where} "
                f"(queue_s less the {latency:.3g} s dispatch latency of warm tasks)",
            }
            notes.append(
                f"{name}: lognormal wait, median {median:.1f} s, sigma {sigma:.2f} ({counted})"
            )
        else:
            fixed = _median(waits) if waits else max(censored, default=0.0)
            wait = {
                "model": "fixed",
                "wait_s": round(fixed, 3),
                "assumption": f"only {counted} in {where}; a distribution needs "
                f"{min_samples} and one complete wait: "
                + ("their median" if waits else "the longest censored bound")
                + " is used as a fixed wait",
            }
            notes.append(f"{name}: {counted} (< {min_samples}): fixed wait {fixed:.1f} s")
        queue_key = (
            s.queue
            if s.queue not in facilities.get(s.facility, {}).get("queues", {})
            else f"{s.queue}-{name}"
        )
        facilities.setdefault(s.facility, {"queues": {}})["queues"][queue_key] = {"wait": wait}
        basis = f"medians of {s.tasks} ok task records in {where}"
        profile: dict[str, Any] = {
            "name": name,
            "facility": s.facility,
            "queue": queue_key,
            "speed": {
                "seconds_per_step": round(_median(s.step_s, 1.0), 6),
                "load_cold_s": round(
                    _median(s.cold_load_s) if s.cold_load_s else max(s.warm_load_s, default=0.0), 3
                ),
                "load_warm_s": round(_median(s.warm_load_s), 3),
                "source": basis,
            },
            "transfer": {
                "down_s": round(_median(s.warm_queue_s), 3),
                "up_s": round(_median(s.transfer_s), 3),
                "source": basis,
            },
        }
        if s.walltime or s.nodes:
            profile["pilot"] = {
                "source": "walltime and nodes from the runs' experiment.yaml; the rest "
                "GlobusComputeEngine defaults"
            }
            if s.walltime:
                profile["pilot"]["walltime"] = str(s.walltime)
            if s.nodes:
                profile["pilot"]["nodes"] = int(s.nodes)
        sites.append(profile)
    data = {
        "name": "calibrated",
        "description": f"calibrated from {where} (crossfl simulate --calibrate)",
        "seed": 0,
        "facilities": facilities,
        "sites": sites,
    }
    Scenario.model_validate(data)  # what we write must load
    return data, notes


def write_scenario(run_dirs: list[Path], out: Path, min_samples: int = MIN_SAMPLES) -> list[str]:
    data, notes = fit(run_dirs, min_samples)
    header = "# Written by `crossfl simulate --calibrate`; every figure names its source.\n"
    atomic_write_text(out, header + yaml.safe_dump(data, sort_keys=False, width=100))
    return notes
