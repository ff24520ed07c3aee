"""Who works how much, and when: the one seam between the round drivers and every decision
about it.

The drivers ask the policy, and only the policy, the same way in a real run and in a replay
(``crossfl simulate``):

- ``plan(site, version, default)``: the task's local steps and learning rate (the strategy's
  ``configure``, then fitted to the site's pilot);
- ``holds(site)``: the strategy keeps the site's last update buffered and the site waits for
  its aggregation, as APPFL's schedulers hold a client (FedQueue's late update, FedCompass'
  arrival group);
- ``round_deadline(...)`` and ``waits_for_every_site()``: when a synchronous round closes
  (every dispatched site, or the strategy's own rule: APPFL FedQueue's timer-or-all);
- ``due_in()`` / ``flush_due(...)``: an aggregation the strategy owes at a time, with no
  arrival (FedCompass' group deadline, APPFL's timer);
- ``observe(record)`` after each task, ``aggregated()`` after each aggregation;
- ``weight(update, version)``: a factor on the update's weight in the aggregation.

What the policy may reach at a site is a ``SiteControl`` (``OpenSite.control``): a replay's
simulated endpoint, or a live site's scheduler (start estimates: ``crossfl.schedulers``).
Facility endpoints take the idle settings as user options (``endpoint_options``) when the
plan renders their configs.

``eager`` (the default) changes nothing in the strategy's plan and lets pilots go as the
engine does. ``queue-aware`` (ours) adds, for any strategy:

- an estimate of a new pilot's queue wait per site: the scheduler's own where it gives one,
  else learned from the waits the site's pilots had (``WaitEstimator``), never a scenario's
  parameters;
- warm or release, by cost, whenever a site goes idle: keep the pilot while the expected
  wait of a new one times the nodes of the other sites (that would wait for it) exceeds this
  site's nodes times its expected idle gap;
- the next pilot asked for before the current one's walltime ends (when the time left is
  below the expected wait plus a task), and a pilot drained a task's length before its end;
- each task fitted into the walltime left in its pilot (down to half the planned steps; below
  that the task goes whole to the next pilot);
- the pilots' walltime chosen among the queue's walltime bins (the shortest that holds
  ``pilot_tasks`` tasks of the measured length: shorter jobs start sooner where priority
  favours them and backfill better);
- staleness- and participation-aware weights: an update ``u`` versions behind counts
  ``1 / (1 + a u)``, and a site that contributed less than its share of updates so far counts
  more (share / its share, within [1/2, 2]; for asynchronous strategies never above 1), per
  site over the whole run, whichever pilot an update came from.

Each decision is written as a ``dispatch`` record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crossfl.clock import Clock
from crossfl.render.options import ENGINE_MAX_IDLETIME_S
from crossfl.schedulers.base import parse_walltime
from crossfl.server.experiment import DispatchSettings, Experiment
from crossfl.server.records import DispatchRecord, TaskRecord
from crossfl.server.strategies.base import ClientPlan, Strategy, Update
from crossfl.sites import Site

HEARTBEAT_S = 30.0  # the endpoint's heartbeat_period default (endpoint/config/config.py)
STRATEGY_PERIOD_S = 5.0  # GlobusComputeEngine's strategy_period default
PRIOR_SIGMA = 1.0  # spread of ln(wait) assumed before any wait is seen
PRIOR_SAMPLES = 2.0  # the prior weighs as much as this many observed waits
STALENESS_A = 0.5  # ours: 1 / (1 + a u) for an update u versions behind


class SiteControl(Protocol):
    """What a dispatch policy can do to and learn about one site's pilot jobs."""

    @property
    def nodes(self) -> int: ...

    @property
    def walltime_s(self) -> float: ...

    def set_idle(self, *, max_idletime_s: float) -> None:
        """Keep an idle pilot this long before releasing it (from now on)."""

    def set_drain(self, drain_s: float) -> None:
        """A pilot takes no new task in the last ``drain_s`` of its walltime."""

    def set_walltime(self, walltime_s: float) -> None:
        """The walltime of the pilots submitted from now on."""

    def request_pilot(self) -> bool:
        """Submit the next pilot now (before the current one ends); False if not done."""

    def pilots(self) -> list[tuple[float, float | None, float | None]] | None:
        """(submitted, started, walltime end) per pilot held or queued (None while queued);
        None where the scheduler cannot be asked."""

    def start_estimate_s(self) -> float | None:
        """The scheduler's own estimate of a new pilot's queue wait; None if it gives none."""

    def walltime_choices(self) -> list[float]:
        """Walltimes (s) a pilot of this site may ask for: the queue's bins."""


class PlannedSite(Protocol):
    """What a policy reads of a site's plan (crossfl.server.plan.SitePlan)."""

    @property
    def catalog(self) -> Site: ...

    @property
    def user_options(self) -> dict[str, Any]: ...

    @property
    def held_nodes(self) -> int: ...


class SiteHandle(Protocol):
    """An open site as a policy sees it (crossfl.server.site_executors.OpenSite): its plan
    and the levers on its pilots, where there are any."""

    @property
    def site(self) -> PlannedSite: ...

    @property
    def control(self) -> SiteControl | None: ...


class WaitEstimator:
    """A new pilot's expected queue wait at one site, learned from the waits its pilots had.

    ln(wait) is taken as normal; its mean and variance are those of the observed waits,
    shrunk toward a prior (mean ``prior_s``, sigma ``PRIOR_SIGMA``) that weighs as much as
    ``PRIOR_SAMPLES`` observations. The estimate is the lognormal's mean. A pilot still
    queued longer than that raises it to what it has waited (a wait known to be at least so
    long)."""

    def __init__(self, prior_s: float) -> None:
        self.prior_s = max(1.0, float(prior_s))
        self.logs: list[float] = []

    def add(self, wait_s: float) -> None:
        self.logs.append(math.log(max(1.0, wait_s)))

    def expected_s(self, waiting_for_s: float = 0.0) -> float:
        if not self.logs:
            return max(self.prior_s, waiting_for_s)
        k, n = PRIOR_SAMPLES, len(self.logs)
        m0 = math.log(self.prior_s) - PRIOR_SIGMA**2 / 2
        mean = (k * m0 + sum(self.logs)) / (k + n)
        spread = k * (PRIOR_SIGMA**2 + (m0 - mean) ** 2) + sum((x - mean) ** 2 for x in self.logs)
        var = spread / (k + n)
        return max(math.exp(mean + var / 2), waiting_for_s)


@dataclass
class SiteState:
    """What the policy knows of one site."""

    nodes: int = 1
    walltime_s: float | None = None
    step_s: float | None = None  # measured seconds per local step (moving average)
    load_s: float = 0.0  # the last warm task's model load (a cold one's until one is seen)
    warm_seen: bool = False
    overhead_s: float = 0.0  # submit -> start on a warm worker, and result transfer
    pilot_start: float | None = None  # the current pilot, as inferred (no scheduler view)
    idle_since: float | None = None
    keep: bool = False  # its pilot is kept warm when idle
    busy_since: float | None = None
    planned_steps: int = 0
    updates: int = 0  # accepted updates so far (participation)
    seen_pilots: set[float] = field(default_factory=set)  # submitted times already counted

    def task_s(self, steps: int) -> float | None:
        if self.step_s is None:
            return None
        return self.load_s + steps * self.step_s + self.overhead_s


class DispatchPolicy:
    """``eager``: every task as the strategy planned it, pilots released as the engine does."""

    name = "eager"

    def __init__(
        self,
        experiment: Experiment,
        clock: Clock,
        write: Callable[[DispatchRecord], None] = lambda r: None,
        strategy: Strategy | None = None,
        *,
        synchronous: bool = True,
    ) -> None:
        self.exp, self.clock, self.write = experiment, clock, write
        self.strategy = strategy
        self.synchronous = synchronous
        self.settings: DispatchSettings = experiment.dispatch
        self.controls: dict[str, SiteControl] = {}
        self.last_aggregation_at: float | None = None

    # -- set up ------------------------------------------------------------------------------
    def endpoint_options(self, site: str, walltime_s: float | None) -> dict[str, Any]:
        """User options for a facility endpoint's config (the site entry's own win)."""
        return {}

    def start(self, handles: Mapping[str, SiteHandle]) -> None:
        """Once, before the first task."""
        self.controls = {n: h.control for n, h in handles.items() if h.control is not None}

    # -- who, how much ---------------------------------------------------------------------
    def plan(self, site: str, version: int, default: ClientPlan) -> ClientPlan:
        """The site's next task: the strategy's plan (FedQueue and FedCompass size it)."""
        assert self.strategy is not None
        return self.strategy.configure(site, version, default)

    def holds(self, site: str) -> bool:
        """The strategy buffers the site's last update and holds the site until it is
        aggregated (APPFL answers such a client only then)."""
        return self.strategy is not None and site in self.strategy.held_sites()

    def weight(self, update: Update, version: int) -> float:
        return 1.0

    # -- when ------------------------------------------------------------------------------
    def waits_for_every_site(self) -> bool:
        """A synchronous round waits for an update of every site (held ones count), not
        only for its own tasks: APPFL's FedQueue rule (with the timer as the deadline)."""
        return self.strategy is not None and self.strategy.round_rule == "timer_or_all"

    def round_deadline(self, opened: float, first_arrival: float | None) -> float | None:
        """Clock time a synchronous round may close at with what arrived (None: never).

        An experiment's ``quorum.deadline_s`` counts from the round's start. The strategy's
        own round timeout counts from the round's start, or, under the timer-or-all rule,
        from the last aggregation (the first round: from its first arrival), as APPFL's
        FedQueue timer does."""
        if self.exp.quorum.deadline_s is not None:
            return opened + self.exp.quorum.deadline_s
        timeout = self.strategy.round_timeout_s() if self.strategy is not None else None
        if timeout is None:
            return None
        if not self.waits_for_every_site():
            return opened + timeout
        base = self.last_aggregation_at if self.last_aggregation_at is not None else first_arrival
        return None if base is None else base + timeout

    def due_in(self) -> float | None:
        """Seconds until the strategy owes an aggregation without an arrival."""
        return self.strategy.due_in() if self.strategy is not None else None

    def aggregated(self) -> None:
        self.last_aggregation_at = self.clock.now()

    # -- what came back --------------------------------------------------------------------
    def observe(self, record: TaskRecord) -> None:
        """A task came back (or failed)."""


def task_started_at(record: TaskRecord) -> float | None:
    """When the task began on its worker: its last submission (a retry's, not the first)
    plus its queue time."""
    if record.queue_s is None or record.task_wall_s is None:
        return None
    return record.received_at - record.task_wall_s + record.queue_s


class QueueAware(DispatchPolicy):
    """Ours: the levers listed in the module's docstring."""

    name = "queue-aware"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sites: dict[str, SiteState] = {}
        self.waits: dict[str, WaitEstimator] = {}

    def state(self, site: str) -> SiteState:
        return self.sites.setdefault(site, SiteState())

    def estimator(self, site: str) -> WaitEstimator:
        if site not in self.waits:
            prior = self.settings.expected_wait_s.get(site, self.settings.prior_wait_s)
            self.waits[site] = WaitEstimator(prior)
        return self.waits[site]

    def record(self, site: str, action: str, **detail: Any) -> None:
        self.write(DispatchRecord(site=site, at_s=self.clock.now(), action=action, detail=detail))

    # -- waits -----------------------------------------------------------------------------
    def expected_wait_s(self, site: str) -> float:
        control = self.controls.get(site)
        estimate = control.start_estimate_s() if control is not None else None
        if estimate is not None:
            return estimate
        queued_for = 0.0
        for submitted, started, _end in self.pilot_list(site) or []:
            if started is None:
                queued_for = max(queued_for, self.clock.now() - submitted)
        return self.estimator(site).expected_s(queued_for)

    def pilot_list(self, site: str) -> list[tuple[float, float | None, float | None]] | None:
        control = self.controls.get(site)
        return control.pilots() if control is not None else None

    def learn_waits(self, site: str) -> None:
        """Count the wait of every pilot that started since the last look (as the scheduler
        lists its jobs: submitted and started)."""
        st, control = self.state(site), self.controls.get(site)
        if control is None:
            return
        for submitted, started, _end in control.pilots() or []:
            if started is not None and submitted not in st.seen_pilots:
                st.seen_pilots.add(submitted)
                self.estimator(site).add(started - submitted)

    # -- the pilots ------------------------------------------------------------------------
    def keep_warm(self, site: str, gap_s: float) -> bool:
        """Keep an idle pilot: the other sites' nodes waiting for a new pilot cost more than
        this site's nodes held idle for ``gap_s``."""
        st = self.state(site)
        others = sum(self.state(s).nodes for s in self.exp_sites() if s != site)
        return self.expected_wait_s(site) * others > st.nodes * gap_s

    def exp_sites(self) -> list[str]:
        return [e.name for e in self.exp.sites]

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
        """A facility's endpoint takes its idle settings once, for the run: the cost rule
        with the expected idle gap taken as ``warm_if_wait_over_s`` (nothing is measured
        yet) and every other site one node."""
        if walltime_s is None:
            return {}
        wait = self.settings.expected_wait_s.get(site, self.settings.prior_wait_s)
        others = max(1, len(self.exp.sites) - 1)
        if wait * others <= self.settings.warm_if_wait_over_s:
            return {}
        return self.idle_settings(walltime_s, wait)

    def start(self, handles: Mapping[str, SiteHandle]) -> None:
        super().start(handles)
        for name, handle in handles.items():
            st = self.state(name)
            control = self.controls.get(name)
            st.nodes = handle.site.held_nodes if control is None else control.nodes
            st.walltime_s = (
                control.walltime_s
                if control is not None
                else pilot_walltime_s(handle.site.catalog, handle.site.user_options)
            )
            expected = self.expected_wait_s(name)
            others = max(1, len(handles) - 1)
            st.keep = (
                st.walltime_s is not None
                and expected * others > st.nodes * self.settings.warm_if_wait_over_s
            )
            self.choose_shape(name, self.settings.prior_task_s)
            if control is not None and st.keep and st.walltime_s is not None:
                control.set_idle(max_idletime_s=st.walltime_s)
            self.record(
                name,
                "keep-warm" if st.keep else "release-idle",
                expected_wait_s=expected,
                walltime_s=st.walltime_s,
                max_idletime_s=st.walltime_s if st.keep else ENGINE_MAX_IDLETIME_S,
            )

    def current_pilot(self, site: str) -> tuple[float, float] | None:
        """(start, walltime end) of the running pilot a new task would use, if any: the
        scheduler's view where there is one, else inferred from the site's tasks (a cold
        task starts a pilot; a lost one, an idle release or the walltime ends it)."""
        now, st = self.clock.now(), self.state(site)
        listed = self.pilot_list(site)
        drain = self.drain_s(site)
        if listed is not None:
            running = [(end, start) for _s, start, end in listed if end is not None and end > now]
            usable = [r for r in running if r[0] - now > drain] or running
            if not usable:
                return None
            end, start = max(usable)
            assert start is not None
            return start, end
        if st.pilot_start is None or st.walltime_s is None:
            return None
        end = st.pilot_start + st.walltime_s
        idle_limit = st.walltime_s if st.keep else ENGINE_MAX_IDLETIME_S + 2 * STRATEGY_PERIOD_S
        released = st.idle_since is not None and now - st.idle_since > idle_limit
        if now >= end or released:
            st.pilot_start = None
            return None
        return st.pilot_start, end

    def drain_s(self, site: str) -> float:
        """A task's length and the margin: a pilot takes no new task this close to its end."""
        st = self.state(site)
        if not self.settings.next_pilot:
            return 0.0
        task = st.task_s(st.planned_steps or self.exp.training.local_steps)
        return 0.0 if task is None else task + self.settings.walltime_margin_s

    def next_pilot(self, site: str, steps: int) -> None:
        """Ask for the next pilot when the current one ends before a new one would start
        and the next task would have run."""
        control, st = self.controls.get(site), self.state(site)
        pilot = self.current_pilot(site)
        task = st.task_s(steps)
        if not self.settings.next_pilot or control is None or pilot is None or task is None:
            return
        if not st.keep:
            return
        left = pilot[1] - self.clock.now()
        wait = self.expected_wait_s(site)
        if left - task <= wait and control.request_pilot():
            self.record(site, "next-pilot", walltime_left_s=left, expected_wait_s=wait)

    # -- the work --------------------------------------------------------------------------
    def plan(self, site: str, version: int, default: ClientPlan) -> ClientPlan:
        planned = super().plan(site, version, default)
        st = self.state(site)
        pilot = self.current_pilot(site)  # before the site counts as busy again
        st.busy_since, st.idle_since = self.clock.now(), None
        st.planned_steps = planned.local_steps
        self.next_pilot(site, planned.local_steps)
        if not self.settings.fit_walltime or st.step_s is None or pilot is None:
            return planned
        left = pilot[1] - self.clock.now() - self.settings.walltime_margin_s - st.overhead_s
        fit = int((left - st.load_s) // st.step_s)
        if fit >= planned.local_steps:
            return planned
        if fit >= max(1, math.ceil(planned.local_steps / 2)):
            self.record(
                site,
                "shorten",
                planned_steps=planned.local_steps,
                steps=fit,
                walltime_left_s=left,
                step_s=st.step_s,
            )
            st.planned_steps = fit
            return ClientPlan(fit, planned.lr)
        return planned  # whole, on the next pilot (this one drains it)

    def weight(self, update: Update, version: int) -> float:
        if not self.settings.weighting:
            return 1.0
        counts = {s: self.state(s).updates for s in self.exp_sites()}
        total = sum(counts.values())
        share = 1.0
        if total > 0:
            mine = max(counts.get(update.site, 0), 1) / total
            share = min(2.0, max(0.5, (1.0 / len(counts)) / mine))
        w = share / (1.0 + STALENESS_A * max(0, version - update.base_version))
        return w if self.synchronous else min(1.0, w)

    def observe(self, record: TaskRecord) -> None:
        site = record.site
        st = self.state(site)
        st.busy_since = None
        self.learn_waits(site)
        if record.status != "ok" or not record.steps or record.train_s is None:
            if record.error and ("ManagerLost" in record.error or "timed out" in record.error):
                st.pilot_start = None  # its pilot is gone (or never came)
            return
        st.updates += 1
        st.step_s = _average(st.step_s, record.train_s / record.steps)
        started = task_started_at(record)
        if record.cache_hit is False:  # a new pilot's first task
            if started is not None:
                st.pilot_start = started
                if self.pilot_list(site) is None and record.queue_s is not None:
                    self.estimator(site).add(max(1.0, record.queue_s - st.overhead_s))
            if not st.warm_seen:  # no warm load seen yet: the cold one, to be safe
                st.load_s = record.load_s or 0.0
        else:
            st.warm_seen = True
            st.load_s = record.load_s or 0.0
            st.overhead_s = (record.queue_s or 0.0) + (record.transfer_s or 0.0)
        control = self.controls.get(site)
        if control is not None and self.settings.next_pilot:
            control.set_drain(self.drain_s(site))
        self.choose_shape(site)
        if self.synchronous:
            st.idle_since = record.received_at
            self.warm_or_release(site)
        self.next_pilot(site, st.planned_steps or self.exp.training.local_steps)

    def idle_gap_s(self, site: str) -> float:
        """Expected time until the site's next task: the round closes when the slowest busy
        site is back (or at the round's deadline)."""
        now, gaps = self.clock.now(), [0.0]
        for other in self.exp_sites():
            ot = self.state(other)
            if other == site or ot.busy_since is None:
                continue
            task = ot.task_s(ot.planned_steps) or 0.0
            pilot = self.current_pilot(other)
            queue = 0.0 if pilot is not None else self.expected_wait_s(other)
            gaps.append(max(0.0, ot.busy_since + queue + task - now))
        gap = max(gaps)
        deadline = self.round_deadline(now, now) if self.waits_for_every_site() else None
        return gap if deadline is None else min(gap, max(0.0, deadline - now))

    def warm_or_release(self, site: str) -> None:
        control, st = self.controls.get(site), self.state(site)
        if control is None or st.walltime_s is None:
            return
        gap = self.idle_gap_s(site)
        keep = self.keep_warm(site, gap)
        if keep != st.keep:
            st.keep = keep
            control.set_idle(max_idletime_s=st.walltime_s if keep else ENGINE_MAX_IDLETIME_S)
            self.record(
                site,
                "keep-warm" if keep else "release-idle",
                expected_wait_s=self.expected_wait_s(site),
                idle_gap_s=gap,
            )

    def choose_shape(self, site: str, task_s: float | None = None) -> None:
        """The shortest walltime bin that holds ``pilot_tasks`` tasks of the measured length
        (before one is measured: ``task_s``) and a margin, for the pilots submitted from now
        on."""
        control, st = self.controls.get(site), self.state(site)
        task = task_s or st.task_s(st.planned_steps or self.exp.training.local_steps)
        if control is None or task is None or not self.settings.fit_shape:
            return
        need = self.settings.pilot_tasks * task + self.settings.walltime_margin_s
        choices = sorted(set(control.walltime_choices()) | {control.walltime_s})
        fits = [w for w in choices if w >= need]
        best = fits[0] if fits else choices[-1]
        if best != control.walltime_s:
            control.set_walltime(best)
            st.walltime_s = best
            self.record(site, "walltime", walltime_s=best, task_s=task)


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
    experiment: Experiment,
    clock: Clock,
    write: Callable[[DispatchRecord], None] = lambda r: None,
    strategy: Strategy | None = None,
    *,
    synchronous: bool = True,
) -> DispatchPolicy:
    return POLICIES[experiment.dispatch.name](
        experiment, clock, write, strategy, synchronous=synchronous
    )
