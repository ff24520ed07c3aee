"""When and how much each site is asked to work: the dispatch policy of a run.

A strategy decides how updates combine (and may suggest local steps); a dispatch policy
decides what the batch queues make of it, from what the kit alone knows about each site:
its pilots' queue waits and walltime, its speed. The drivers call it at three points, the
same in a real run and a replay (``crossfl simulate``):

- ``start(handles)``, once: per site, keep a pilot warm between tasks or let the endpoint
  release it (a replay's simulated endpoint takes the idle settings at once; a facility's takes
  them as user options, ``endpoint_options``, when the plan renders its config);
- ``local_steps(site, steps)``, before each task: the steps the task may do;
- ``observe(record)``, after each task: what the site's queue and speed were.

``eager`` (the default) changes nothing: today's behaviour. ``queue-aware`` keeps a pilot
warm where a new one is expected to wait longer than ``warm_if_wait_over_s`` (at the cost of
idle node-hours, shown in the run's records; idle no longer than that wait, nor past its
walltime: a limit the endpoint enforces, with or without the server), and sizes a task's local steps to the site's
measured speed and the walltime left in its pilot, so a task is not lost to the walltime.
Each decision is written as a ``dispatch`` record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from crossfl.clock import Clock
from crossfl.render.options import ENGINE_MAX_IDLETIME_S
from crossfl.schedulers.base import parse_walltime
from crossfl.server.experiment import DispatchSettings, Experiment
from crossfl.server.records import DispatchRecord, TaskRecord
from crossfl.sites import Site

if TYPE_CHECKING:
    from crossfl.server.site_executors import OpenSite

HEARTBEAT_S = 30.0  # the endpoint's heartbeat_period default (endpoint/config/config.py)


class DispatchPolicy:
    """``eager``: every task as the strategy planned it, pilots released as the engine does."""

    name = "eager"

    def __init__(
        self,
        experiment: Experiment,
        clock: Clock,
        write: Callable[[DispatchRecord], None] = lambda r: None,
    ) -> None:
        self.exp, self.clock, self.write = experiment, clock, write
        self.settings: DispatchSettings = experiment.dispatch

    def endpoint_options(self, site: str, walltime_s: float | None) -> dict[str, Any]:
        """User options for a facility endpoint's config (the site entry's own win)."""
        return {}

    def start(self, handles: Mapping[str, OpenSite]) -> None:
        """Once, before the first task."""

    def local_steps(self, site: str, steps: int) -> int:
        return steps

    def observe(self, record: TaskRecord) -> None:
        """A task came back (or failed)."""


class QueueAware(DispatchPolicy):
    """Warm pilots where the queue is slow; local work sized to speed and walltime left."""

    name = "queue-aware"

    def __init__(
        self,
        experiment: Experiment,
        clock: Clock,
        write: Callable[[DispatchRecord], None] = lambda r: None,
    ) -> None:
        super().__init__(experiment, clock, write)
        self.step_s: dict[str, float] = {}  # measured seconds per local step (moving average)
        self.load_s: dict[str, float] = {}  # the last task's model load (a cold one at first)
        self.waits: dict[str, float] = {}  # measured queue wait of a new pilot (moving average)
        self.pilot_ends: dict[str, float] = {}  # clock time the site's current pilot ends
        self.walltime_s: dict[str, float] = {}

    # -- the pilots ------------------------------------------------------------------------
    def warm(self, expected_wait_s: float | None) -> bool:
        return expected_wait_s is not None and expected_wait_s > self.settings.warm_if_wait_over_s

    def idle_settings(self, walltime_s: float, expected_wait_s: float) -> dict[str, Any]:
        """Keep an idle pilot as long as a new one is expected to wait, never past its
        walltime: idling longer costs more than queueing again would (rent-or-buy). The
        limit is the endpoint's own (the engine's ``max_idletime``, the endpoint's
        ``idle_heartbeats_soft``), so a pilot whose server died is released within it."""
        idle = min(float(walltime_s), float(expected_wait_s))
        return {
            "max_idletime": idle,
            "idle_heartbeats_soft": math.ceil(idle / HEARTBEAT_S) + 2,
        }

    def endpoint_options(self, site: str, walltime_s: float | None) -> dict[str, Any]:
        wait = self.settings.expected_wait_s.get(site)
        if walltime_s is None or wait is None or not self.warm(wait):
            return {}
        return self.idle_settings(walltime_s, wait)

    def start(self, handles: Mapping[str, OpenSite]) -> None:
        for name, handle in handles.items():
            ex: Any = handle.executor
            walltime = getattr(ex, "walltime_s", None) or pilot_walltime_s(
                handle.site.catalog, handle.site.user_options
            )
            if walltime is not None:
                self.walltime_s[name] = walltime
            expected = (
                ex.expected_wait_s()
                if hasattr(ex, "expected_wait_s")
                else self.settings.expected_wait_s.get(name)
            )
            keep = self.warm(expected) and walltime is not None and expected is not None
            idle = (
                self.idle_settings(walltime, expected)["max_idletime"]
                if keep and walltime is not None and expected is not None
                else ENGINE_MAX_IDLETIME_S
            )
            if keep and hasattr(ex, "set_idle"):  # a replay's endpoint: at once
                ex.set_idle(max_idletime_s=idle)
            self.write(
                DispatchRecord(
                    site=name,
                    at_s=self.clock.now(),
                    action="keep-warm" if keep else "release-idle",
                    detail={
                        "expected_wait_s": expected,
                        "walltime_s": walltime,
                        "max_idletime_s": idle,
                    },
                )
            )

    # -- the work --------------------------------------------------------------------------
    def local_steps(self, site: str, steps: int) -> int:
        speed, ends = self.step_s.get(site), self.pilot_ends.get(site)
        if not self.settings.fit_walltime or speed is None or ends is None:
            return steps
        left = ends - self.clock.now() - self.settings.walltime_margin_s
        if left <= 0:  # this pilot is done for: the task starts a new one, whole
            return steps
        fit = max(1, int((left - self.load_s.get(site, 0.0)) // speed))
        if fit < steps:
            self.write(
                DispatchRecord(
                    site=site,
                    at_s=self.clock.now(),
                    action="shorten",
                    detail={
                        "planned_steps": steps,
                        "steps": fit,
                        "walltime_left_s": left,
                        "step_s": speed,
                    },
                )
            )
            return fit
        return steps

    def observe(self, record: TaskRecord) -> None:
        if record.status != "ok" or not record.steps or record.train_s is None:
            return
        site = record.site
        self.step_s[site] = _average(self.step_s.get(site), record.train_s / record.steps)
        self.load_s[site] = record.load_s or 0.0
        if record.cache_hit is False and record.queue_s is not None:  # a new pilot's first task
            self.waits[site] = _average(self.waits.get(site), record.queue_s)
            walltime = self.walltime_s.get(site)
            if walltime is not None:
                started = record.submitted_at + record.queue_s
                self.pilot_ends[site] = started + walltime


def pilot_walltime_s(site: Site, options: Mapping[str, Any]) -> float | None:
    """The walltime of a site's pilot jobs as its options ask (else the site's own); None
    where a site has no pilot jobs."""
    if not site.sched.batch:
        return None
    return float(parse_walltime(str(options.get("walltime", site.walltime))))


def _average(old: float | None, new: float, weight: float = 0.5) -> float:
    return new if old is None else weight * new + (1 - weight) * old


POLICIES: dict[str, type[DispatchPolicy]] = {p.name: p for p in (DispatchPolicy, QueueAware)}


def make_policy(
    experiment: Experiment, clock: Clock, write: Callable[[DispatchRecord], None] = lambda r: None
) -> DispatchPolicy:
    return POLICIES[experiment.dispatch.name](experiment, clock, write)
