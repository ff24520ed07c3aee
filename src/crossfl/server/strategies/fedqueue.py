"""FedQueue: rounds sized to each site's batch-queue delay and step time (APPFL 1.12).

Per site the strategy keeps two moving averages: the queue delay ``q`` (time from submit to
start, ``q <- beta_queue q_obs + (1 - beta_queue) q``, starting at ``q_init``) and the step
time ``c`` (seconds per local step). A round lasts ``t_sync``; a site's job budget is
``J = max(0.5, t_sync - q - theta)`` and its next task runs ``max(floor(J / c), warm_up_steps)``
local steps (at most ``max_local_steps``) with ``lr * min_steps / steps`` so that the
sites' step sizes stay comparable.

Admission: an update is admitted when its queue wait was at most
``q_prior + alpha_admission * t_sync``; a late one is held back and merged into the next
round's aggregation (with its staleness), or used at once when nothing else was admitted.
Its site waits for that aggregation (``held_sites``), as APPFL answers it only then.
A round closes when every site's update is in (held ones count) or on a timer
``(1 + admission_tolerance) t_sync`` after the last aggregation (``round_rule``).
The aggregate replaces the global model: ``w <- sum_k p_k x_k`` with
``p_k proportional to s(staleness_k) * n_k``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field

from crossfl.server.flat import weighted_sum
from crossfl.server.strategies.base import (
    ClientPlan,
    Strategy,
    StrategyParams,
    Update,
    sample_weights,
    staleness_of,
    update_from_state,
    update_to_state,
)
from crossfl.server.strategies.staleness import staleness_discount


class FedQueueParams(StrategyParams):
    t_sync: float = Field(default=3600.0, gt=0.0)  # target round length (s)
    theta: float = Field(default=60.0, ge=0.0)  # safety buffer (s)
    q_init: float = Field(default=2.0, ge=0.0)  # prior queue delay (s)
    beta_queue: float = Field(default=0.5, gt=0.0, le=1.0)
    alpha_compute: float = Field(default=0.5, gt=0.0, le=1.0)
    alpha_admission: float = Field(default=0.2, ge=0.0)
    admission_tolerance: float = Field(default=0.15, ge=0.0)  # round timeout factor
    warm_up_steps: int = Field(default=20, ge=1)
    max_local_steps: int | None = Field(default=None, ge=1)
    staleness_fn: Literal["constant", "harmonic", "exponential"] = "constant"
    beta: float = Field(default=0.5, ge=0.0)  # staleness decay constant
    weighting: Literal["num_samples", "equal"] = "num_samples"


class FedQueue(Strategy):
    name = "fedqueue"
    is_async = False
    merges_late_updates = True  # a late update is discounted by its staleness, not dropped
    round_rule = "timer_or_all"  # APPFL QueueScheduler: all num_clients arrived, or its timer
    Params = FedQueueParams
    params: FedQueueParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queue_est: dict[str, float] = {}
        self.step_time_est: dict[str, float] = {}
        self.late: list[Update] = []

    # ------------------------------------------------------------------ planning

    def held_sites(self) -> set[str]:
        """Sites whose held-back update waits for the next aggregation."""
        return {u.site for u in self.late}

    def round_timeout_s(self) -> float:
        """How long a round waits before aggregating what arrived: (1 + tolerance) t_sync."""
        return (1.0 + self.params.admission_tolerance) * self.params.t_sync

    def job_budget(self, site: str) -> float:
        q = self.queue_est.get(site, self.params.q_init)
        return max(0.5, self.params.t_sync - q - self.params.theta)

    def deadline(self, site: str) -> float:
        """Longest queue wait still admitted for the site's next update."""
        return (
            self.queue_est.get(site, self.params.q_init)
            + self.params.alpha_admission * self.params.t_sync
        )

    def planned_steps(self, site: str) -> int:
        p = self.params
        c = self.step_time_est.get(site)
        if c is None:
            steps = p.warm_up_steps
        else:
            steps = max(math.floor(self.job_budget(site) / c), p.warm_up_steps)
        return min(steps, p.max_local_steps) if p.max_local_steps else steps

    def configure(self, site: str, version: int, default: ClientPlan) -> ClientPlan:
        steps = self.planned_steps(site)
        if site not in self.step_time_est:
            return ClientPlan(steps, default.lr)
        fewest = min(self.planned_steps(s) for s in self.step_time_est)
        return ClientPlan(steps, default.lr * fewest / steps)

    # ------------------------------------------------------------------ aggregation

    def discount(self, staleness: int) -> float:
        """s(u) with ``beta`` as the decay constant (APPFL's FedQueue name for it)."""
        return staleness_discount(self.params.staleness_fn, staleness, a=self.params.beta)

    def observe(self, update: Update) -> bool:
        """Update the site's estimates from its measurements; True when it is admitted."""
        p, site = self.params, update.site
        deadline = self.deadline(site)
        wait = update.queue_wait_s
        if wait is not None:
            prior = self.queue_est.get(site, p.q_init)
            self.queue_est[site] = p.beta_queue * wait + (1.0 - p.beta_queue) * prior
        if update.train_time_s is not None:
            c = update.train_time_s / max(1, update.local_steps)
            prior_c = self.step_time_est.get(site, c)
            self.step_time_est[site] = p.alpha_compute * c + (1.0 - p.alpha_compute) * prior_c
        return wait is None or wait <= deadline

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor:
        self.check_updates(global_params, updates)
        admitted: dict[str, Update] = {}
        for u in updates:
            if self.observe(u):
                admitted[u.site] = u
            else:
                self.late.append(u)
        carried = [u for u in self.late if u.base_version < version]
        self.late = [u for u in self.late if u.base_version >= version]
        for u in carried:  # a newer admitted update from the same site supersedes it
            admitted.setdefault(u.site, u)
        if not admitted:
            admitted = {u.site: u for u in self.late}
            self.late = []
        chosen = list(admitted.values())
        return weighted_sum([u.params for u in chosen], self.factors(chosen, version))

    def factors(self, updates: list[Update], version: int) -> list[float]:
        """Normalized ``p_k``: staleness discount times sample share."""
        share = sample_weights(updates, self.params.weighting)
        raw = [
            self.discount(staleness_of(u, version)) * w
            for u, w in zip(updates, share, strict=False)
        ]
        norm = sum(raw)
        return [r / norm for r in raw]

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "queue_est": dict(self.queue_est),
            "step_time_est": dict(self.step_time_est),
            "late": [update_to_state(u) for u in self.late],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue_est = {str(k): float(v) for k, v in state.get("queue_est", {}).items()}
        self.step_time_est = {str(k): float(v) for k, v in state.get("step_time_est", {}).items()}
        self.late = [update_from_state(d) for d in state.get("late", [])]
