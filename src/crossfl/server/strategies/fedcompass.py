"""FedCompass (Li et al., 2023, arXiv:2309.14675): computing-power-aware asynchronous FL.

Each site's speed (seconds per local step: an exponential moving average of the time from
its task's dispatch to its update's arrival over the task's steps, as APPFL measures it, so
that queue waits, model loads and transfers count) sizes its next task so that sites of
different speeds arrive together in *arrival groups*.
An update that arrives within its group's window (``latest_time_factor`` x the expected time)
waits in the group buffer, and its site waits with it (``held_sites``, as APPFL holds the
client); when the group is complete, or its window has closed (``due_in`` / ``flush_due``:
APPFL's timer; else at the next arrival, before that arrival touches the buffers), the
buffered models are mixed in at once:
``w <- (1 - sum a_i) w + sum a_i x_i`` with ``a_i = alpha * s(staleness_i) / num_sites``
(APPFL's ``num_clients``: the sites given to :meth:`Strategy.register_sites`), each times its
update's ``weight`` (the dispatch policy's; 1 unless it says).
A site without a group (its first arrival) is mixed in alone, FedAsync-style; a late one waits
in a general buffer for the next group aggregation. Both buffers hold one update per site, as
APPFL's do: a site's newer update replaces its buffered older one. Group bookkeeping follows
APPFL 1.12's CompassScheduler; the clock is wall time since the strategy was built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, model_validator

from crossfl.server.flat import weighted_sum
from crossfl.server.strategies.base import (
    ClientPlan,
    Strategy,
    Update,
    staleness_of,
    update_from_state,
    update_to_state,
)
from crossfl.server.strategies.sites import SiteCounts
from crossfl.server.strategies.staleness import StalenessParams


class FedCompassParams(StalenessParams):
    alpha: float = Field(default=0.9, gt=0.0, le=1.0)
    min_local_steps: int = Field(default=20, ge=1)
    max_local_steps: int = Field(default=100, ge=1)
    speed_momentum: float = Field(default=0.9, gt=0.0, le=1.0)
    latest_time_factor: float = Field(default=1.5, ge=1.0)  # group window

    @model_validator(mode="after")
    def _steps_ordered(self) -> FedCompassParams:
        if self.min_local_steps > self.max_local_steps:
            raise ValueError("min_local_steps must not exceed max_local_steps")
        return self


@dataclass
class _Group:
    expected: float  # expected arrival time (s since start)
    latest: float  # end of the arrival window
    pending: list[str] = field(default_factory=list)
    arrived: dict[str, Update] = field(default_factory=dict)  # by site


class FedCompass(Strategy):
    name = "fedcompass"
    is_async = True
    Params = FedCompassParams
    params: FedCompassParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock: Callable[[], float] = time.monotonic
        self._start = self.clock()
        self.speed: dict[str, float] = {}  # seconds per local step
        self.site_counts = SiteCounts()
        self.groups: dict[int, _Group] = {}
        self.site_group: dict[str, int] = {}
        self.general: dict[str, Update] = {}  # late updates by site
        self._dispatched: dict[str, float] = {}
        self._next_group = 0

    # ------------------------------------------------------------------ timing

    def now(self) -> float:
        return self.clock() - self._start

    def reset_clock(self) -> None:
        """Restart the time origin (after swapping ``clock``)."""
        self._start = self.clock()

    def _record_speed(self, update: Update, now: float) -> None:
        """Fold the task's dispatch-to-arrival time per step into the site's speed (its
        training time only when no dispatch was seen, e.g. a task sent before a resume)."""
        steps = max(1, update.local_steps)
        if update.site in self._dispatched:
            measured = (now - self._dispatched[update.site]) / steps
        elif update.train_time_s is not None:
            measured = update.train_time_s / steps
        else:
            return
        measured = max(measured, 1e-9)
        old = self.speed.get(update.site)
        m = self.params.speed_momentum
        self.speed[update.site] = measured if old is None else (1 - m) * old + m * measured

    # ------------------------------------------------------------------ configure

    def configure(self, site: str, version: int, default: ClientPlan) -> ClientPlan:
        now = self.now()
        self._dispatched[site] = now
        if site not in self.speed:
            return ClientPlan(self.params.max_local_steps, default.lr)
        steps = self._join_group(site, now)
        if steps is None:
            steps = self._create_group(site, now)
        return ClientPlan(steps, default.lr)

    def _join_group(self, site: str, now: float) -> int | None:
        p, speed = self.params, self.speed[site]
        best, best_steps = None, -1
        for gid, group in self.groups.items():
            steps = math.floor((group.expected - now) / speed)
            if p.min_local_steps <= steps <= p.max_local_steps and steps >= best_steps:
                best, best_steps = gid, steps
        if best is None:
            return None
        self.groups[best].pending.append(site)
        self.site_group[site] = best
        return best_steps

    def _create_group(self, site: str, now: float) -> int:
        p, speed = self.params, self.speed[site]
        steps = -1
        for group in self.groups.values():
            if now < group.latest:
                members = group.pending + list(group.arrived)
                fastest = min((self.speed[s] for s in members if s in self.speed), default=speed)
                arrival = group.latest + fastest * p.max_local_steps
                candidate = math.floor((arrival - now) / speed)
                if candidate <= p.max_local_steps:
                    steps = max(steps, candidate)
        if 0 <= steps < p.min_local_steps:
            steps = p.min_local_steps
        if steps < 0:
            steps = p.max_local_steps
        gid = self._next_group
        self._next_group += 1
        duration = steps * speed
        self.groups[gid] = _Group(now + duration, now + duration * p.latest_time_factor, [site])
        self.site_group[site] = gid
        return steps

    # ------------------------------------------------------------------ aggregate

    def mixing(self, update: Update, version: int) -> float:
        """``a_i`` for one buffered or arriving update."""
        n = self.site_counts.num_sites()
        s = self.params.discount(staleness_of(update, version))
        return self.params.alpha * s / n * update.weight

    def mix(self, global_params: torch.Tensor, updates: list[Update], version: int) -> torch.Tensor:
        """``(1 - sum a_i) w + sum a_i x_i`` in one fused weighted sum."""
        alphas = [self.mixing(u, version) for u in updates]
        return weighted_sum(
            [global_params, *[u.params for u in updates]], [1.0 - sum(alphas), *alphas]
        )

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor | None:
        update = self.single_update(global_params, updates)
        now = self.now()
        self.site_counts.saw(update.site, update.num_samples)
        self._record_speed(update, now)

        # First what APPFL's timers did before this arrival: every group whose window has
        # closed with arrivals is aggregated with the general buffer (the site's own earlier
        # update included, if it is buffered there), each its own global step.
        batches = self._closed_groups(now)
        # Then this update supersedes whatever of its site is still buffered.
        self._drop_buffered(update.site)
        gid = self.site_group.pop(update.site, None)
        group = self.groups.get(gid) if gid is not None else None
        if gid is None:
            solo = True
        else:
            solo = False
            if group is not None and update.site in group.pending:
                group.pending.remove(update.site)
            if group is None or now > group.latest:
                self.general[update.site] = update
                if group is not None and not group.pending and not group.arrived:
                    del self.groups[gid]
            else:
                group.arrived[update.site] = update
                if not group.pending:
                    batches.append({**self.general, **group.arrived})
                    self.general = {}
                    del self.groups[gid]
        if solo:
            batches.append({update.site: update})
        return self._mix_all(global_params, batches, version)

    def _closed_groups(self, now: float) -> list[dict[str, Update]]:
        """The aggregations owed by windows closed by ``now`` with arrivals, in the order
        APPFL's timers ran them: each group's buffered updates with the general buffer.
        Empty groups are dropped; members still out keep their (closed) group."""
        batches: list[dict[str, Update]] = []
        for gid in sorted(self.groups, key=lambda g: (self.groups[g].latest, g)):
            group = self.groups[gid]
            if now > group.latest and group.arrived:
                batches.append({**self.general, **group.arrived})
                self.general, group.arrived = {}, {}
            if not group.pending and not group.arrived:
                del self.groups[gid]
        return batches

    def _mix_all(
        self, global_params: torch.Tensor, batches: list[dict[str, Update]], version: int
    ) -> torch.Tensor | None:
        """Each batch mixed in turn, a global step each (staleness counted from there)."""
        new = None
        for i, batch in enumerate(batches):
            new = self.mix(global_params if new is None else new, list(batch.values()), version + i)
        return new

    # ------------------------------------------------------------------ the timer

    def held_sites(self) -> set[str]:
        """Sites waiting for their group's aggregation (APPFL holds them until it)."""
        return {site for g in self.groups.values() for site in g.arrived}

    def due_in(self) -> float | None:
        """Seconds until the earliest window with arrivals closes (APPFL's group timer)."""
        closing = [g.latest for g in self.groups.values() if g.arrived]
        return None if not closing else max(0.0, min(closing) - self.now())

    def flush_due(self, global_params: torch.Tensor, version: int) -> torch.Tensor | None:
        """The aggregation owed by windows closed by now, as APPFL's timers run it; None
        when none is owed."""
        return self._mix_all(global_params, self._closed_groups(self.now() + 1e-9), version)

    def _drop_buffered(self, site: str) -> None:
        """Forget ``site``'s buffered update, if any (a newer one of the site has arrived)."""
        self.general.pop(site, None)
        for group in self.groups.values():
            group.arrived.pop(site, None)

    # ------------------------------------------------------------------ sites and checkpoints

    def register_sites(self, sample_counts: Mapping[str, int]) -> None:
        self.site_counts.register(sample_counts)

    def state_dict(self) -> dict[str, Any]:
        """Speeds, sites and every buffered update; groups are re-formed after a resume."""
        buffered = [
            *self.general.values(),
            *(u for g in self.groups.values() for u in g.arrived.values()),
        ]
        return {
            "speed": dict(self.speed),
            "sites": self.site_counts.state_dict(),
            "buffered": [update_to_state(u) for u in buffered],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.speed = {str(k): float(v) for k, v in state.get("speed", {}).items()}
        self.site_counts.load_state_dict(state.get("sites", {}))
        self.general = {}
        for d in state.get("buffered", []):
            u = update_from_state(d)
            self.general[u.site] = u
        self.groups, self.site_group, self._dispatched = {}, {}, {}
