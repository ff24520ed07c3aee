"""Screening client updates before they reach the strategy, and new global adapters before they
replace the last good one.

An update is rejected, with a reason that goes into metrics.jsonl, when its tensors do not match
the base adapter's layout (the names, shapes and dtypes of the adapter the server derives from
the model's config and the LoRA settings: never what a site sent first), when it holds NaN or
infinity, when it lies further from the current global adapter than ``max_relative_distance``
times the global's own L2 norm (this holds from the first update of a run, one update alone
included), or when it lies further than ``max_distance_factor`` times the median L2 distance of
the updates it is compared with (the others of its round, or the recent accepted ones for
asynchronous runs; from ``min_updates_for_distance`` updates on). A new global is refused when
it is not finite or moved further than ``max_relative_distance`` times the last good one's norm.

A site's weight is bounded by what the server knows of its data (``SampleBounds``): the
partition the server wrote for it, its data file where the site runs here, or the size its
experiment entry declares; a site reporting more samples than that is counted at that.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from crossfl.client.contract import LoraSpec
from crossfl.server.flat import FlatSpec


def base_layout(model_dir: str, lora: LoraSpec, dtype: str) -> FlatSpec:
    """The adapter every update must match: peft's LoRA tensors of ``lora`` on the model of
    ``model_dir``'s config (no weight is read; crossfl.client.layout), in the wire ``dtype``."""
    from crossfl.client.adapter_io import torch_dtype
    from crossfl.client.layout import adapter_shapes

    wire = torch_dtype(dtype)
    shapes = adapter_shapes(model_dir, lora)
    return FlatSpec.from_state(
        {k: torch.empty(shape, dtype=wire, device="meta") for k, shape in shapes.items()}
    )


def adapter_size_bound(spec: FlatSpec) -> int:
    """The most bytes a safetensors file of this layout takes: its tensors, and a header of
    their names, shapes and offsets with room for the LoRA config in its metadata."""
    data = sum(
        n * torch.empty((), dtype=d).element_size()
        for n, d in zip(spec.sizes, spec.dtypes, strict=True)
    )
    names = sum(len(k) for k in spec.keys)
    return 8 + 64 * 1024 + 256 * len(spec.keys) + names + data


def layout_problem(spec: FlatSpec, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why the state dict does not fit the layout (names, shapes, dtypes), or None."""
    try:
        spec.check(state)
    except ValueError as exc:
        return f"wrong shape: {exc}"
    for key, dtype in zip(spec.keys, spec.dtypes, strict=True):
        if state[key].dtype != dtype:
            return f"wrong dtype: {key}: {state[key].dtype}, the layout's is {dtype}"
    return None


def finite_problem(params: torch.Tensor) -> str | None:
    if not bool(torch.isfinite(params).all()):
        bad = int((~torch.isfinite(params)).sum())
        return f"non-finite: {bad} of {params.numel()} values are NaN or infinite"
    return None


def distance(params: torch.Tensor, global_params: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(params - global_params))


def norm(params: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(params))


@dataclass
class DistanceScreen:
    """The bound relative to the global (``relative`` x its norm, from one update on) and the
    norm-outlier rule (distance > factor x median distance of at least ``min_count``)."""

    factor: float | None = 10.0
    min_count: int = 3
    relative: float | None = 10.0
    history: deque[float] = field(default_factory=lambda: deque(maxlen=16))

    def too_far(self, d: float, global_norm: float, what: str = "the global adapter") -> str | None:
        """Why a distance ``d`` from a global of norm ``global_norm`` is too far, or None."""
        if self.relative is None or d <= self.relative * global_norm:
            return None
        return (
            f"too far from {what}: L2 distance {d:.4g} > {self.relative:g} x its norm "
            f"{global_norm:.4g}"
        )

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

    def global_problem(self, new: torch.Tensor, old: torch.Tensor) -> str | None:
        """Why a new global may not replace ``old`` (the last good one), or None."""
        problem = finite_problem(new)
        if problem is not None:
            return problem
        return self.too_far(distance(new, old), norm(old), "the last good global")


class SampleBounds:
    """What the server knows of each site's training-set size, and the count an update is
    weighed by: what it reports, at most its site's known size. A site whose size the server
    does not know is bounded by the largest known one; when none is known, every update
    counts 1 (equal weights)."""

    def __init__(self, known: Mapping[str, int]) -> None:
        top = max(known.values(), default=0)
        self.counts = {site: (n if n > 0 else top) for site, n in known.items()}

    def counted(self, site: str, reported: int) -> int:
        bound = self.counts.get(site, 0)
        return min(reported, bound if bound > 0 else 1)
