"""``appfl:<ClassName>``: an APPFL aggregator driven through the flat-buffer interface.

The wrapper turns flat buffers into the dict of tensors APPFL expects (the adapter's own keys
from the :class:`FlatSpec` the driver hands over with :meth:`Strategy.set_layout`; before that,
as when a test calls it directly, one key ``"params"``), tells
the aggregator the global model, versions and sample sizes we know, calls its ``aggregate``
and flattens the result. :meth:`AppflStrategy.register_sites` does what APPFL's server does
before training: it sets ``num_clients`` (overriding one given in the kwargs, as the server
does) and every client's sample size. Classes whose ``aggregate`` takes a ``client_id`` run
asynchronously (one update per call); the others get a whole round. APPFL is optional: install it with
``pip install --no-deps -r requirements/appfl.txt``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from crossfl.errors import UserError
from crossfl.server.flat import FlatSpec
from crossfl.server.strategies.base import Strategy, Update, staleness_of
from crossfl.server.strategies.sites import checked_counts

INSTALL_HINT = "pip install --no-deps -r requirements/appfl.txt"

# Aggregator attributes that carry state between calls (moments, buffers, clocks).
_STATE_ATTRS = (
    "m_vector",
    "v_vector",
    "step",
    "buff_size",
    "global_step",
    "client_step",
    "client_sample_size",
)


def appfl_aggregators() -> dict[str, type[Any]]:
    """APPFL's aggregator classes by name; UserError when APPFL cannot be imported."""
    try:
        import appfl.algorithm.aggregator as agg_mod
    except ImportError as exc:
        raise UserError(
            f"APPFL aggregators are not importable here ({exc})",
            field="strategy.name",
            fix=INSTALL_HINT,
        ) from None
    base = agg_mod.BaseAggregator
    return {
        name: obj
        for name, obj in vars(agg_mod).items()
        if isinstance(obj, type) and issubclass(obj, base) and obj is not base
    }


def appfl_class(class_name: str) -> type[AppflStrategy]:
    """The wrapper class (sync or async) for APPFL's aggregator ``class_name``, bound to it."""
    classes = appfl_aggregators()
    cls = classes.get(class_name)
    if cls is None:
        raise UserError(
            f"APPFL has no aggregator {class_name!r}",
            field="strategy.name",
            fix=f"use appfl:<one of {', '.join(sorted(classes))}>",
        )
    params = inspect.signature(cls.aggregate).parameters
    wrapper = AppflAsync if "client_id" in params else AppflSync
    return type(
        f"Appfl{class_name}", (wrapper,), {"aggregator_cls": cls, "name": f"appfl:{class_name}"}
    )


def make_appfl_strategy(class_name: str, **configs: Any) -> AppflStrategy:
    """Build the wrapper for APPFL's ``class_name``; ``configs`` become its aggregator_configs."""
    return appfl_class(class_name)(**configs)


class AppflStrategy(Strategy):
    """Common part of the sync and async wrappers."""

    name = "appfl"
    aggregator_cls: ClassVar[type]  # set by appfl_class()

    def __init__(self, **configs: Any) -> None:
        from omegaconf import DictConfig

        super().__init__()
        cls = self.aggregator_cls
        try:
            self.aggregator = cls(aggregator_configs=DictConfig(dict(configs)))
        except Exception as exc:  # APPFL reads required configs in __init__
            raise UserError(
                f"{cls.__name__} rejected its configuration: {exc!r}", field="strategy.kwargs"
            ) from None
        self._accepts = set(inspect.signature(self.aggregator.aggregate).parameters)
        self.layout: FlatSpec | None = None

    def set_layout(self, spec: FlatSpec) -> None:
        """Use the adapter's own keys when talking to APPFL (else one key ``params``)."""
        self.layout = spec

    def to_dict(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.layout is None:
            return {"params": vec.clone()}
        return self.layout.unflatten(vec, copy=True)

    def to_flat(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.layout is None:
            return state["params"].detach().to(torch.float32).clone()
        return self.layout.flatten(state)

    def _prepare(self, global_params: torch.Tensor, updates: list[Update]) -> None:
        self.check_updates(global_params, updates)
        self.aggregator.global_state = self.to_dict(global_params)
        for u in updates:
            self.aggregator.set_client_sample_size(u.site, u.num_samples)

    def register_sites(self, sample_counts: Mapping[str, int]) -> None:
        counts = checked_counts(sample_counts)
        self.aggregator.aggregator_configs.num_clients = len(counts)
        for site, n in counts.items():
            self.aggregator.set_client_sample_size(site, n)

    def state_dict(self) -> dict[str, Any]:
        state = {
            a: copy.deepcopy(getattr(self.aggregator, a))
            for a in _STATE_ATTRS
            if hasattr(self.aggregator, a)
        }
        num_clients = self.aggregator.aggregator_configs.get("num_clients")
        if num_clients is not None:
            state["num_clients"] = int(num_clients)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {*_STATE_ATTRS, "num_clients"}
        if unknown:
            raise ValueError(f"{self.name}: unknown state keys {sorted(unknown)}")
        for attr, value in state.items():
            if attr == "num_clients":
                self.aggregator.aggregator_configs.num_clients = int(value)
            else:
                setattr(self.aggregator, attr, copy.deepcopy(value))


class AppflSync(AppflStrategy):
    is_async: ClassVar[bool] = False

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor:
        self._prepare(global_params, updates)
        kwargs: dict[str, Any] = {}
        if "staleness" in self._accepts:
            kwargs["staleness"] = {u.site: staleness_of(u, version) for u in updates}
        if "local_steps" in self._accepts:
            kwargs["local_steps"] = {u.site: u.local_steps for u in updates}
        result = self.aggregator.aggregate(
            {u.site: self.to_dict(u.params) for u in updates}, **kwargs
        )
        return self.to_flat(result)


class AppflAsync(AppflStrategy):
    is_async: ClassVar[bool] = True

    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor | None:
        u = self.single_update(global_params, updates)
        self._prepare(global_params, updates)
        agg = self.aggregator
        if hasattr(agg, "client_step"):  # FedAsync/FedBuff measure staleness themselves
            agg.global_step = version
            agg.client_step[u.site] = u.base_version
        kwargs: dict[str, Any] = {}
        if "staleness" in self._accepts:
            kwargs["staleness"] = staleness_of(u, version)
        if "local_steps" in self._accepts:
            kwargs["local_steps"] = u.local_steps
        result = agg.aggregate(u.site, self.to_dict(u.params), **kwargs)
        if getattr(agg, "buff_size", 0):  # FedBuff still filling its buffer
            return None
        return self.to_flat(result)
