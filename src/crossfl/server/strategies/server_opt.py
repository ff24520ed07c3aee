"""Server-side optimizers on the FedAvg pseudo-gradient (Hsu et al. 2019; Reddi et al. 2021).

``delta = sum_i w_i x_i - w`` with sample weights ``w_i``; then
FedAvgM: ``v <- beta v + delta; w <- w + server_lr v``;
FedAdam: ``m <- b1 m + (1-b1) delta; v <- b2 v + (1-b2) delta^2; w <- w + eta m / (sqrt(v) + tau)``;
FedYogi: as FedAdam with ``v <- v - (1-b2) delta^2 sign(v - delta^2)``.
The second moment starts at ``tau^2``, as in the paper and APPFL 1.12.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

import torch
from pydantic import Field

from crossfl.server.flat import weighted_sum
from crossfl.server.strategies.base import Strategy, StrategyParams, Update, sample_weights


def _load_tensor(state: dict[str, Any], key: str) -> torch.Tensor | None:
    value = state.get(key)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"strategy state {key!r} must be a tensor, got {type(value).__name__}")
    return value.detach().to(torch.float32).clone()


class ServerOptParams(StrategyParams):
    weighting: Literal["num_samples", "equal"] = "num_samples"


class ServerOptimizer(Strategy):
    """FedAvg's pseudo-gradient followed by a server optimizer step (sync)."""

    is_async = False
    params: ServerOptParams
    _moments: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._moments:
            setattr(self, name, None)

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor:
        self.check_updates(global_params, updates)
        delta = weighted_sum(
            [u.params for u in updates], sample_weights(updates, self.params.weighting)
        )
        delta.sub_(global_params)
        return global_params + self.step(delta)

    @abstractmethod
    def step(self, delta: torch.Tensor) -> torch.Tensor:
        """The server update added to the global params (updates moments in place)."""

    def state_dict(self) -> dict[str, Any]:
        return {
            name: getattr(self, name) for name in self._moments if getattr(self, name) is not None
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - set(self._moments)
        if unknown:
            raise ValueError(f"strategy {self.name!r}: unknown state keys {sorted(unknown)}")
        for name in self._moments:
            setattr(self, name, _load_tensor(state, name))


class FedAvgMParams(ServerOptParams):
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # APPFL: server_momentum_param_1
    server_lr: float = Field(default=1.0, gt=0.0)


class FedAvgM(ServerOptimizer):
    name = "fedavgm"
    Params = FedAvgMParams
    params: FedAvgMParams
    _moments = ("velocity",)
    velocity: torch.Tensor | None

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        if self.velocity is None:
            self.velocity = torch.zeros_like(delta)
        self.velocity.mul_(self.params.momentum).add_(delta)
        return self.velocity * self.params.server_lr


class FedAdamParams(ServerOptParams):
    server_lr: float = Field(default=0.01, gt=0.0)  # eta (APPFL: server_learning_rate)
    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)  # APPFL: server_momentum_param_1
    beta2: float = Field(default=0.99, ge=0.0, lt=1.0)  # APPFL: server_momentum_param_2
    tau: float = Field(default=1e-3, gt=0.0)  # APPFL: server_adapt_param


class _AdaptiveServerOpt(ServerOptimizer):
    Params = FedAdamParams
    params: FedAdamParams
    _moments = ("m", "v")
    m: torch.Tensor | None
    v: torch.Tensor | None

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        p = self.params
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, p.tau**2)
        self.m.mul_(p.beta1).add_(delta, alpha=1.0 - p.beta1)
        self.update_second_moment(self.v, delta.square())
        return (self.m * p.server_lr).div_(self.v.sqrt().add_(p.tau))

    @abstractmethod
    def update_second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        """Update ``v`` in place from the squared pseudo-gradient."""


class FedAdam(_AdaptiveServerOpt):
    name = "fedadam"

    def update_second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        v.mul_(self.params.beta2).add_(delta_sq, alpha=1.0 - self.params.beta2)


class FedYogi(_AdaptiveServerOpt):
    name = "fedyogi"

    def update_second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> None:
        sign = torch.sign(v - delta_sq)
        v.sub_(delta_sq.mul_(sign), alpha=1.0 - self.params.beta2)
