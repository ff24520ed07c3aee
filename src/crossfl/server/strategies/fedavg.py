"""FedAvg (McMahan et al., 2017): the sample-weighted mean of the clients' models."""

from __future__ import annotations

from typing import Literal

import torch

from crossfl.server.flat import weighted_sum
from crossfl.server.strategies.base import Strategy, StrategyParams, Update, sample_weights


class FedAvgParams(StrategyParams):
    weighting: Literal["num_samples", "equal"] = "num_samples"


class FedAvg(Strategy):
    """``w <- sum_i n_i x_i / sum_i n_i`` (APPFL's FedAvgAggregator, ``sample_size`` mode)."""

    name = "fedavg"
    is_async = False
    Params = FedAvgParams
    params: FedAvgParams

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor:
        self.check_updates(global_params, updates)
        weights = sample_weights(updates, self.params.weighting)
        return weighted_sum([u.params for u in updates], weights)
