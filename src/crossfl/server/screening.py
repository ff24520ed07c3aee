"""Screening client updates before they reach the strategy.

An update is rejected, with a reason that goes into metrics.jsonl, when its tensors do not match
the global adapter's layout, when it holds NaN or infinity, or when it lies further from the
global adapter than ``max_distance_factor`` times the median L2 distance of the updates it is
compared with (the others of its round, or the recent accepted ones for asynchronous runs).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

import torch

from crossfl.server.flat import FlatSpec


def layout_problem(spec: FlatSpec, state: dict[str, torch.Tensor]) -> str | None:
    """Why the state dict does not fit the layout, or None."""
    try:
        spec.check(state)
    except ValueError as exc:
        return f"wrong shape: {exc}"
    return None


def finite_problem(params: torch.Tensor) -> str | None:
    if not bool(torch.isfinite(params).all()):
        bad = int((~torch.isfinite(params)).sum())
        return f"non-finite: {bad} of {params.numel()} values are NaN or infinite"
    return None


def distance(params: torch.Tensor, global_params: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(params - global_params))


@dataclass
class DistanceScreen:
    """The norm-outlier rule: distance > factor x median distance (of at least ``min_count``)."""

    factor: float | None = 10.0
    min_count: int = 3
    history: deque[float] = field(default_factory=lambda: deque(maxlen=16))

    def outliers(self, distances: dict[str, float]) -> dict[str, str]:
        """Sites whose distance is an outlier among ``distances`` plus the recent history."""
        if self.factor is None:
            return {}
        pool = [*distances.values(), *self.history]
        if len(pool) < self.min_count:
            return {}
        median = statistics.median(pool)
        if median <= 0:
            return {}
        limit = self.factor * median
        return {
            site: f"too far from the global adapter: L2 distance {d:.4g} > {self.factor:g} x median "
            f"{median:.4g}"
            for site, d in distances.items()
            if d > limit
        }

    def accepted(self, d: float) -> None:
        self.history.append(d)
