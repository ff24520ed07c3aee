"""Federated strategies over flat float32 buffers, selected by name from the experiment file."""

from __future__ import annotations

from typing import Any

from crossfl.errors import UserError
from crossfl.server.strategies.base import ClientPlan, Strategy, StrategyParams, Update
from crossfl.server.strategies.fedasync import FedAsync, FedBuff
from crossfl.server.strategies.fedavg import FedAvg
from crossfl.server.strategies.fedcompass import FedCompass
from crossfl.server.strategies.fedqueue import FedQueue
from crossfl.server.strategies.server_opt import FedAdam, FedAvgM, FedYogi

__all__ = [
    "APPFL_PREFIX",
    "STRATEGIES",
    "ClientPlan",
    "Strategy",
    "StrategyParams",
    "Update",
    "get_strategy",
    "is_async",
    "known_names",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedAvgM, FedAdam, FedYogi, FedAsync, FedBuff, FedCompass, FedQueue)
}

APPFL_PREFIX = "appfl:"


def known_names() -> list[str]:
    """Names accepted by :func:`get_strategy` (``appfl:<Class>`` wraps an APPFL aggregator)."""
    return [*STRATEGIES, f"{APPFL_PREFIX}<AggregatorClass>"]


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build the strategy called ``name`` with the experiment file's ``kwargs``.

    Raises UserError for an unknown name (listing the known ones) or a bad kwarg (naming it).
    """
    key = name.strip()
    if key.lower().startswith(APPFL_PREFIX):
        from crossfl.server.strategies.appfl_wrap import make_appfl_strategy

        return make_appfl_strategy(key[len(APPFL_PREFIX) :], **kwargs)
    return _builtin(name)(**kwargs)


def _builtin(name: str) -> type[Strategy]:
    cls = STRATEGIES.get(name.strip().lower())
    if cls is None:
        raise UserError(
            f"unknown strategy {name!r}",
            field="strategy.name",
            fix=f"use one of: {', '.join(known_names())}",
        )
    return cls


def is_async(name: str) -> bool:
    """Whether the strategy called ``name`` aggregates one update per call (without building it).

    ``appfl:<Class>`` names are asynchronous when the class's ``aggregate`` takes a client id.
    Raises UserError like :func:`get_strategy` for unknown names.
    """
    key = name.strip()
    if key.lower().startswith(APPFL_PREFIX):
        from crossfl.server.strategies.appfl_wrap import appfl_class

        return appfl_class(key[len(APPFL_PREFIX) :]).is_async
    return _builtin(name).is_async
