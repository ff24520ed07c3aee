"""The batch schedulers the kit knows, one module each (slurm.py, pbs.py, local.py), behind
one interface (base.Scheduler), as Parsl keeps one provider per scheduler, and the launchers
(launchers.py). They work from small frozen values (spec.py: `JobSpec`, `BatchJob`,
`Binding`) that the site catalog builds; nothing here imports crossfl.sites.

Adding one (Flux, LSF, ...) is one new module in this package: a `Scheduler` subclass with
its facts (provider class, directive prefix and options, walltime format, job header,
submit/query/cancel commands, local-rank variable, the provider's YAML fields), decorated
with `@register`. Every module here is imported when the package is, so site files may name
it at once; tests/test_schedulers.py adds one in the test itself, and drives one from values
alone. The pilot job's provider must be one Parsl (and so the Globus Compute endpoint) can
build.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TypeVar

from crossfl.schedulers.base import (
    AccountCheck,
    JobStatus,
    QueueLimits,
    Scheduler,
    parse_walltime,
)
from crossfl.schedulers.spec import BatchJob, Binding, JobSpec, cpu_list

__all__ = [
    "AccountCheck",
    "BatchJob",
    "Binding",
    "JobSpec",
    "JobStatus",
    "QueueLimits",
    "Scheduler",
    "cpu_list",
    "get",
    "names",
    "parse_walltime",
    "register",
    "unregister",
]

_REGISTRY: dict[str, Scheduler] = {}
S = TypeVar("S", bound=type[Scheduler])


def register(cls: S) -> S:
    """Class decorator: make a scheduler known by its `name`."""
    _REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Scheduler:
    """The scheduler a site file names (KeyError for an unknown one: the schema checks)."""
    return _REGISTRY[name]


def prefixes() -> dict[str, str]:
    """Directive prefix -> scheduler name, for every scheduler that has directives."""
    return {s.directive_prefix: s.name for s in _REGISTRY.values() if s.directive_prefix}


for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name not in ("base", "spec"):
        importlib.import_module(f"{__name__}.{_module.name}")
