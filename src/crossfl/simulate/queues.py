"""Batch-queue waits: per facility and queue, a sampler of how long a pilot job
(a block) waits between submission and start.

Three kinds of model, chosen per queue with ``model:``:

- ``appfl_lognormal``: APPFL 1.12's own queue simulation, so FedQueue's setting can be
  reproduced. ``QueueScheduler._sample_queue_delay``
  (appfl/algorithm/scheduler/queue_scheduler.py:359-369) draws
  ``max(0, lognormvariate(ln(mean) - sigma^2/2, sigma))`` from one
  ``random.Random(queue_seed)`` (line 57): a lognormal whose *mean* is ``mean``.
  Defaults: ``queue_sigma`` 0.4 (line 47), ``queue_means`` = ``q_init`` = 2.0 s
  (lines 40, 48-50), one mean per client in client order (``_get_indexed_value``,
  lines 371-379). The client sleeps through the wait inside every training call
  (algorithm/trainer/vanilla_trainer.py:128-129): every task pays a fresh i.i.d. wait,
  which ``pilot: {mode: per_task}`` reproduces here.
- ``lognormal``: a fit given by hand, by its median and either ``sigma`` (of ln wait)
  or the 90th percentile ``p90_s``; ``calibrate`` writes this kind from the kit's own
  telemetry.
- ``fixed``: the same wait every time (``wait_s: 0`` turns queueing off).

A queue may scale waits by job shape: ``shape_bins`` is a list of
``{max_nodes, max_walltime, factor}``; the first bin the job fits multiplies the
sampled wait (no bin fits: factor 1).

Every model and bin carries ``source:`` (where its figures come from) or
``assumption:`` (why they are assumed), never both, never neither.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from crossfl.schedulers import parse_walltime
from crossfl.schema import StrictModel

Z90 = NormalDist().inv_cdf(0.9)  # 1.2816: the 90th percentile of a standard normal


class Cited(StrictModel):
    """A block of figures with its basis: a source, or an assumption said out loud."""

    source: str | None = None
    assumption: str | None = None

    @model_validator(mode="after")
    def _basis(self) -> Cited:
        if bool(self.source and self.source.strip()) == bool(
            self.assumption and self.assumption.strip()
        ):
            raise ValueError(
                "give exactly one of `source:` (where these figures come from) "
                "or `assumption:` (why they are assumed)"
            )
        return self


class AppflLognormal(Cited):
    """APPFL 1.12's queue delay: a lognormal with the given *mean*, clipped at 0."""

    model: Literal["appfl_lognormal"]
    mean_s: float = Field(default=2.0, gt=0)
    sigma: float = Field(default=0.4, ge=0)

    @property
    def mu(self) -> float:
        return math.log(self.mean_s) - 0.5 * self.sigma * self.sigma

    def sample(self, rng: random.Random) -> float:
        return max(0.0, rng.lognormvariate(self.mu, self.sigma))

    def mean(self) -> float:
        return self.mean_s


class Lognormal(Cited):
    """A lognormal given by its median and sigma (of ln wait) or 90th percentile."""

    model: Literal["lognormal"]
    median_s: float = Field(gt=0)
    sigma: float | None = Field(default=None, ge=0)
    p90_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _spread(self) -> Lognormal:
        if (self.sigma is None) == (self.p90_s is None):
            raise ValueError(
                "give exactly one of sigma (spread of ln wait) or p90_s (90th percentile, seconds)"
            )
        if self.p90_s is not None and self.p90_s <= self.median_s:
            raise ValueError(f"p90_s {self.p90_s} must be above median_s {self.median_s}")
        return self

    @property
    def mu(self) -> float:
        return math.log(self.median_s)

    @property
    def spread(self) -> float:
        if self.sigma is not None:
            return self.sigma
        assert self.p90_s is not None
        return math.log(self.p90_s / self.median_s) / Z90

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.spread)

    def mean(self) -> float:
        return math.exp(self.mu + 0.5 * self.spread**2)


class Fixed(Cited):
    model: Literal["fixed"]
    wait_s: float = Field(ge=0)

    def sample(self, rng: random.Random) -> float:
        return self.wait_s

    def mean(self) -> float:
        return self.wait_s


WaitModel = Annotated[AppflLognormal | Lognormal | Fixed, Field(discriminator="model")]


def walltime_seconds(value: str | None) -> float | None:
    return None if value is None else float(parse_walltime(value))


class ShapeBin(Cited):
    """Jobs up to ``max_nodes`` nodes and ``max_walltime`` wait ``factor`` x as long."""

    max_nodes: int | None = Field(default=None, ge=1)
    max_walltime: str | None = None  # HH:MM:SS
    factor: float = Field(gt=0)

    @field_validator("max_walltime")
    @classmethod
    def _walltime(cls, v: str | None) -> str | None:
        walltime_seconds(v)
        return v

    def fits(self, nodes: int, walltime_s: float) -> bool:
        wall = walltime_seconds(self.max_walltime)
        return (self.max_nodes is None or nodes <= self.max_nodes) and (
            wall is None or walltime_s <= wall
        )


class QueueModel(StrictModel):
    """One queue of one facility."""

    wait: WaitModel
    shape_bins: list[ShapeBin] = Field(default_factory=list)

    def factor(self, nodes: int, walltime_s: float) -> float:
        return next((b.factor for b in self.shape_bins if b.fits(nodes, walltime_s)), 1.0)

    def sample(self, rng: random.Random, nodes: int, walltime_s: float) -> float:
        """One pilot job's wait, seconds."""
        return self.wait.sample(rng) * self.factor(nodes, walltime_s)

    def expected_wait_s(self, nodes: int, walltime_s: float) -> float:
        """The mean wait for this job shape (what a dispatch policy weighs)."""
        return self.wait.mean() * self.factor(nodes, walltime_s)
