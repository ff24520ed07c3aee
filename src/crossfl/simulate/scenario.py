"""A queue scenario: facilities and their queues, and the site profiles an
experiment's sites take on (which queue, how the pilot behaves, how fast the site is).

Shipped scenarios live in deploy/queues/. A file is checked before anything runs:
the first bad field becomes one ``UserError`` naming the file, the field and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from crossfl.errors import UserError
from crossfl.schema import StrictModel, user_error
from crossfl.simulate.queues import Cited, QueueModel, walltime_seconds
from crossfl.yamlio import load_mapping

# GlobusComputeEngine's JobStatusPoller defaults: max_idletime 120 s, strategy period
# 5 s (globus_compute_endpoint/engines/globus_compute.py:165-169, version 4.19.0); a
# lost manager is declared after Parsl HTEX's heartbeat_threshold, 120 s
# (parsl/executors/high_throughput/executor.py:265).
ENGINE_MAX_IDLETIME_S = 120.0
ENGINE_STRATEGY_PERIOD_S = 5.0
HTEX_HEARTBEAT_THRESHOLD_S = 120.0
ENGINE_SOURCE = (
    "GlobusComputeEngine 4.19.0 defaults (engines/globus_compute.py:165-169: "
    "max_idletime 120 s, strategy_period 5 s) and the kit's rendered providers "
    "(init_blocks 0, min_blocks 0, max_blocks 1)"
)


class Pilot(Cited):
    """How the endpoint gets workers: Parsl blocks (pilot jobs) as GlobusComputeEngine
    runs them, or one batch job per task (``per_task``, APPFL's simulation)."""

    mode: Literal["pilot", "per_task"] = "pilot"
    walltime: str | None = None  # HH:MM:SS; None: the experiment's, else 01:00:00
    nodes: int | None = Field(default=None, ge=1)  # None: the experiment's, else 1
    max_idletime_s: float = Field(default=ENGINE_MAX_IDLETIME_S, ge=0)
    strategy_period_s: float = Field(default=ENGINE_STRATEGY_PERIOD_S, ge=0)
    init_blocks: int = Field(default=0, ge=0)
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    preemption_per_hour: float = Field(default=0.0, ge=0)
    lost_after_s: float = Field(default=HTEX_HEARTBEAT_THRESHOLD_S, ge=0)

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, v: str | None) -> str | None:
        walltime_seconds(v)
        return v

    @model_validator(mode="after")
    def _blocks(self) -> Pilot:
        if self.min_blocks > self.max_blocks or self.init_blocks > self.max_blocks:
            raise ValueError(
                f"max_blocks {self.max_blocks} is below min_blocks {self.min_blocks} "
                f"or init_blocks {self.init_blocks}: raise it"
            )
        return self

    @classmethod
    def engine_defaults(cls) -> Pilot:
        return cls(source=ENGINE_SOURCE)


class Speed(Cited):
    """How fast the site works: seconds per local step, and the base-model load on a
    fresh worker (cold: first task of a pilot) and on a warm one."""

    seconds_per_step: float = Field(gt=0)
    load_cold_s: float = Field(default=0.0, ge=0)
    load_warm_s: float = Field(default=0.0, ge=0)


class Transfer(Cited):
    """Fixed latency each way plus, optionally, the adapter's bytes at a bandwidth."""

    down_s: float = Field(default=0.0, ge=0)  # submit -> the task is at the endpoint
    up_s: float = Field(default=0.0, ge=0)  # the worker finished -> the server has it
    megabytes_per_s: float | None = Field(default=None, gt=0)

    def seconds(self, fixed: float, nbytes: int) -> float:
        rate = 0.0 if self.megabytes_per_s is None else nbytes / (self.megabytes_per_s * 1e6)
        return fixed + rate

    @classmethod
    def free(cls) -> Transfer:
        return cls(assumption="no transfer time given: transfers are instantaneous")


class SiteProfile(StrictModel):
    """What one experiment site behaves like."""

    name: str = Field(min_length=1)
    facility: str
    queue: str
    pilot: Pilot = Field(default_factory=Pilot.engine_defaults)
    speed: Speed
    transfer: Transfer = Field(default_factory=Transfer.free)


class Facility(StrictModel):
    docs: list[str] = Field(default_factory=list)
    queues: dict[str, QueueModel] = Field(min_length=1)


class Scenario(StrictModel):
    name: str
    description: str = ""
    seed: int = 0
    facilities: dict[str, Facility] = Field(min_length=1)
    sites: list[SiteProfile] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        seen: set[str] = set()
        for p in self.sites:
            if p.name in seen:
                raise ValueError(f"site profile {p.name!r} appears twice: rename one")
            seen.add(p.name)
            if p.facility not in self.facilities:
                raise ValueError(
                    f"site profile {p.name!r} names facility {p.facility!r}, not in "
                    f"facilities ({', '.join(sorted(self.facilities))}): add it or fix the name"
                )
            queues = self.facilities[p.facility].queues
            if p.queue not in queues:
                raise ValueError(
                    f"site profile {p.name!r} names queue {p.queue!r}, not a queue of "
                    f"{p.facility} ({', '.join(sorted(queues))}): add it or fix the name"
                )
        return self

    def queue_of(self, profile: SiteProfile) -> QueueModel:
        return self.facilities[profile.facility].queues[profile.queue]

    def assign(self, site_names: list[str]) -> dict[str, SiteProfile]:
        """Each experiment site's profile: the profile of the same name, else the unused
        profiles in file order, cycling when the experiment has more sites."""
        by_name = {p.name: p for p in self.sites}
        free = [p for p in self.sites if p.name not in site_names] or list(self.sites)
        out: dict[str, SiteProfile] = {}
        k = 0
        for name in site_names:
            if name in by_name:
                out[name] = by_name[name]
            else:
                out[name] = free[k % len(free)]
                k += 1
        return out


EXAMPLE = "deploy/queues/calm.yaml"


def validation_error(exc: ValidationError, file: Path, raw: Any) -> UserError:
    """The first bad field of a scenario file as one UserError (the others are counted)."""
    return user_error(exc, file=file, raw=raw, schema=EXAMPLE)


def load_scenario(path: str | Path) -> Scenario:
    file = Path(path)
    if not file.is_file():
        raise UserError("queue scenario not found", file=file, fix=f"pass a file such as {EXAMPLE}")
    raw = load_mapping(file, fix=f"give name, facilities and sites as in {EXAMPLE}")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, file, raw) from None


def no_queue(scenario: Scenario) -> Scenario:
    """``scenario`` with every queue wait 0: the same pilots, speeds and transfers."""
    from crossfl.simulate.queues import Fixed, QueueModel

    zero = QueueModel(wait=Fixed(model="fixed", wait_s=0, assumption="no queue: the reference"))
    facilities = {
        name: f.model_copy(update={"queues": {q: zero for q in f.queues}})
        for name, f in scenario.facilities.items()
    }
    return scenario.model_copy(
        update={"name": f"{scenario.name} without queues", "facilities": facilities}
    )
