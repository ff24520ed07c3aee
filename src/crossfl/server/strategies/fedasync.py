"""Asynchronous strategies: FedAsync (Xie et al., 2019) and FedBuff (Nguyen et al., 2022).

Both follow APPFL 1.12's FedAsyncAggregator and FedBuffAggregator. Each update has a client
weight ``p``: ``1 / num_sites`` (``weighting: equal``) or the site's share of all sites'
training samples (``weighting: num_samples``), both from :meth:`Strategy.register_sites` (as
APPFL's ``num_clients`` and ``set_client_sample_size``); the weights of all sites sum to 1.
FedAsync mixes every arriving model into the global one:
``w <- (1 - a_t) w + a_t x`` with ``a_t = alpha * s(staleness) * p``.
FedBuff accumulates ``s(staleness) * p * (x - w)`` over K arrivals, then applies
``w <- w + alpha * sum``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from crossfl.server.strategies.base import Strategy, Update, staleness_of
from crossfl.server.strategies.sites import SiteCounts, Weighting
from crossfl.server.strategies.staleness import StalenessParams


class AsyncParams(StalenessParams):
    weighting: Weighting = "equal"


class _AsyncStrategy(Strategy):
    """Shared bookkeeping: the sites and their sample counts, one update per call."""

    is_async = True
    params: AsyncParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site_counts = SiteCounts()

    def register_sites(self, sample_counts: Mapping[str, int]) -> None:
        self.site_counts.register(sample_counts)

    def _single(self, global_params: torch.Tensor, updates: list[Update]) -> Update:
        update = self.single_update(global_params, updates)
        self.site_counts.saw(update.site, update.num_samples)
        return update

    def client_weight(self, update: Update) -> float:
        """``p``: 1 / num_sites, or the site's share of all samples (times the update's
        ``weight``, the dispatch policy's: 1 unless it says)."""
        return self.site_counts.weight(update.site, self.params.weighting) * update.weight

    def state_dict(self) -> dict[str, Any]:
        return {"sites": self.site_counts.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.site_counts.load_state_dict(state.get("sites", {}))


class FedAsyncParams(AsyncParams):
    alpha: float = Field(default=0.9, gt=0.0, le=1.0)


class FedAsync(_AsyncStrategy):
    name = "fedasync"
    Params = FedAsyncParams
    params: FedAsyncParams

    def mixing(self, update: Update, version: int) -> float:
        """``a_t`` for this update."""
        s = self.params.discount(staleness_of(update, version))
        return self.params.alpha * s * self.client_weight(update)

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor:
        update = self._single(global_params, updates)
        a_t = self.mixing(update, version)
        return torch.lerp(global_params, update.params, a_t)


class FedBuffParams(AsyncParams):
    K: int = Field(default=3, ge=1)  # buffer size
    alpha: float = Field(default=0.9, gt=0.0)  # server step on the buffered sum (APPFL's)


class FedBuff(_AsyncStrategy):
    name = "fedbuff"
    Params = FedBuffParams
    params: FedBuffParams

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.buffer: torch.Tensor | None = None
        self.count = 0

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor | None:
        update = self._single(global_params, updates)
        coeff = self.params.discount(staleness_of(update, version)) * self.client_weight(update)
        if self.buffer is None or self.count == 0:
            self.buffer = torch.zeros_like(global_params)
        # buffer += coeff * (x - w), fused as two axpys on the flat buffers
        self.buffer.add_(update.params, alpha=coeff).sub_(global_params, alpha=coeff)
        self.count += 1
        if self.count < self.params.K:
            return None
        new = global_params.add(self.buffer, alpha=self.params.alpha)
        self.buffer, self.count = None, 0
        return new

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["count"] = self.count
        if self.buffer is not None and self.count:
            state["buffer"] = self.buffer
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.count = int(state.get("count", 0))
        buffer = state.get("buffer")
        self.buffer = buffer.detach().to(torch.float32).clone() if buffer is not None else None
        if self.count and self.buffer is None:
            raise ValueError("fedbuff state has a count but no buffer")
