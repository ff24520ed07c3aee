"""The strategy interface the round driver talks to, over flat float32 parameter buffers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from crossfl.schema import user_error
from crossfl.server.flat import FlatSpec

__all__ = [
    "ClientPlan",
    "Strategy",
    "StrategyParams",
    "Update",
    "sample_weights",
    "staleness_of",
    "update_from_state",
    "update_to_state",
]


@dataclass
class Update:
    """One client's result for one task."""

    site: str
    params: torch.Tensor  # flat float32: the client's local adapter after training (not a delta)
    num_samples: int
    base_version: int  # global model version the client started from
    local_steps: int
    train_time_s: float | None = None  # measured training time for local_steps
    queue_wait_s: float | None = None  # measured time from submit to start
    weight: float = 1.0  # the dispatch policy's factor on its aggregation weight


@dataclass
class ClientPlan:
    """What a site's next task should do."""

    local_steps: int
    lr: float


class StrategyParams(BaseModel):
    """Base for a strategy's keyword arguments: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def staleness_of(update: Update, version: int) -> int:
    """How many global versions the update is behind (never negative)."""
    return max(0, version - update.base_version)


class Strategy(ABC):
    """A federated optimization algorithm over flat parameter buffers.

    Subclasses set ``name``, ``is_async`` and ``Params`` (a :class:`StrategyParams` model
    validating the experiment file's kwargs) and implement :meth:`aggregate`. Everything a
    driver asks of a strategy is declared here: ``configure``, ``aggregate``,
    ``round_timeout_s``, ``merges_late_updates``, ``set_layout`` and the state for resuming.
    """

    name: ClassVar[str]
    is_async: ClassVar[bool]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    merges_late_updates: ClassVar[bool] = False
    """Whether a synchronous round's late update (it missed the deadline) is merged into the
    next round's aggregation (strategies that discount staleness), rather than only recorded."""
    round_rule: ClassVar[Literal["dispatched", "timer_or_all"]] = "dispatched"
    """When a synchronous round closes: when its dispatched tasks answered (or at the quorum
    deadline), or, ``timer_or_all``, when every site's update is in (held ones included) or
    at ``round_timeout_s`` after the last aggregation (APPFL's FedQueue scheduler)."""

    def __init__(self, **kwargs: Any) -> None:
        self.params = self.parse_kwargs(kwargs)

    @classmethod
    def parse_kwargs(cls, kwargs: Mapping[str, Any]) -> StrategyParams:
        """Validate ``kwargs`` with ``cls.Params``; the first problem becomes a UserError."""
        try:
            return cls.Params(**kwargs)
        except ValidationError as exc:
            allowed = ", ".join(sorted(cls.Params.model_fields)) or "none"
            unknown = exc.errors()[0]["type"] == "extra_forbidden"
            raise user_error(
                exc,
                field_prefix="strategy.kwargs",
                what=f"strategy {cls.name!r}",
                fix=f"known arguments: {allowed}" if unknown else None,
            ) from None

    def configure(self, site: str, version: int, default: ClientPlan) -> ClientPlan:
        """Local steps and learning rate for ``site``'s next task (default: unchanged)."""
        return default

    def round_timeout_s(self) -> float | None:
        """How long a synchronous round waits before it aggregates what arrived (the quorum
        deadline when the experiment sets none); None: it waits for every site."""
        return None

    def held_sites(self) -> set[str]:
        """Sites whose last update the strategy buffers and which wait for its aggregation
        before their next task (APPFL answers them only then). Default: none."""
        return set()

    def due_in(self) -> float | None:
        """Seconds until the strategy aggregates without an arrival (a timer); None: never."""
        return None

    def flush_due(self, global_params: torch.Tensor, version: int) -> torch.Tensor | None:
        """The aggregation owed when ``due_in()`` has run out (None: nothing to do)."""
        return None

    def set_layout(self, spec: FlatSpec) -> None:  # noqa: B027 (an optional hook)
        """The tensors behind the flat buffers (names, shapes), told once known: at the first
        update, and after a resume. Strategies that work on the flat buffers ignore it."""

    @abstractmethod
    def aggregate(
        self, global_params: torch.Tensor, updates: list[Update], version: int
    ) -> torch.Tensor | None:
        """New global flat params from ``updates``, or None while buffering.

        Sync strategies get every update of a round; async strategies one update per call.
        ``version`` is the version of ``global_params``.
        """

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (moments, buffers, speed estimates)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state, got keys {sorted(state)}")

    @staticmethod
    def check_updates(global_params: torch.Tensor, updates: list[Update]) -> None:
        """Raise ValueError unless every update is a flat buffer shaped like the global one."""
        if global_params.dim() != 1:
            raise ValueError(f"global params must be 1-D, got shape {tuple(global_params.shape)}")
        if not updates:
            raise ValueError("aggregate() needs at least one update")
        for u in updates:
            if u.params.shape != global_params.shape:
                raise ValueError(
                    f"update from {u.site!r} has shape {tuple(u.params.shape)}, "
                    f"global params {tuple(global_params.shape)}"
                )
            if u.num_samples < 0:
                raise ValueError(f"update from {u.site!r} has negative num_samples")

    def single_update(self, global_params: torch.Tensor, updates: list[Update]) -> Update:
        """The one update an asynchronous strategy gets per call (checked)."""
        self.check_updates(global_params, updates)
        if len(updates) != 1:
            raise ValueError(f"{self.name} aggregates one update per call, got {len(updates)}")
        return updates[0]

    # ------------------------------------------------------------ driver hook: the sites

    def register_sites(self, sample_counts: Mapping[str, int]) -> None:  # noqa: B027 (optional)
        """Every site of the experiment with its training-set size, before training starts.

        Contract for drivers: call it once at the start of every run, after building the
        strategy and before its first :meth:`configure` or :meth:`aggregate`, with *every*
        site of the experiment (parked or not, whether or not it will be dispatched) mapped
        to the number of training examples it uses: the count its client reports as
        ``num_samples``, i.e. its file's records capped by ``training.max_samples`` (the
        site's override first). A partitioned site's record count is in the run's
        ``data/partition.json``; a site with its own data needs a cheap first task.
        A resumed run calls it again,
        before or after :meth:`load_state_dict` (the checkpoint holds the registration too;
        the last call wins, and the counts are the same). Counts of 0 register the site list
        alone (sample weighting then falls back to equal weights).

        This is what APPFL's server does before training: ``num_clients`` from its config
        (``agent/server.py`` ``_set_num_clients``) and each client's count through
        ``set_client_sample_size``. Strategies that weigh a site by its share of all samples
        or by ``1 / number of sites`` (FedAsync, FedBuff, FedCompass, ``appfl:<Class>``)
        use it; without it they count only the sites whose updates they have seen. Default:
        nothing (the synchronous strategies weigh each round's updates by the counts those
        updates report).
        """


def sample_weights(updates: list[Update], mode: str = "num_samples") -> list[float]:
    """Normalized client weights: by sample count, or equal (also when all counts are 0),
    each times its update's ``weight`` (the dispatch policy's; 1 unless it says)."""
    total = sum(u.num_samples for u in updates)
    if mode == "num_samples" and total > 0:
        raw = [u.num_samples * u.weight for u in updates]
    else:
        raw = [u.weight for u in updates]
    norm = sum(raw)
    return [r / norm for r in raw] if norm > 0 else [1.0 / len(updates)] * len(updates)


def update_to_state(u: Update) -> dict[str, Any]:
    """A buffered update as plain data for a checkpoint."""
    return {
        "site": u.site,
        "params": u.params,
        "num_samples": u.num_samples,
        "base_version": u.base_version,
        "local_steps": u.local_steps,
        "train_time_s": u.train_time_s,
        "queue_wait_s": u.queue_wait_s,
        "weight": u.weight,
    }


def update_from_state(d: Mapping[str, Any]) -> Update:
    """Inverse of :func:`update_to_state` (params copied to float32)."""
    return Update(
        site=str(d["site"]),
        params=d["params"].detach().to(torch.float32).clone(),
        num_samples=int(d["num_samples"]),
        base_version=int(d["base_version"]),
        local_steps=int(d["local_steps"]),
        train_time_s=d.get("train_time_s"),
        queue_wait_s=d.get("queue_wait_s"),
        weight=float(d.get("weight", 1.0)),
    )
