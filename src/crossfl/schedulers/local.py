"""No scheduler: the endpoint's workers run on this machine (Parsl's LocalProvider), one
block, no pilot jobs and no batch scripts."""

from __future__ import annotations

from crossfl.schedulers import register
from crossfl.schedulers.base import Fields, Scheduler
from crossfl.schedulers.spec import JobSpec


@register
class Local(Scheduler):
    name = "local"
    title = "a local site"
    batch = False
    provider = "LocalProvider"

    def provider_fields(self, spec: JobSpec, var: dict[str, str]) -> Fields:
        return [("init_blocks", "1"), ("min_blocks", "0"), ("max_blocks", "1")]
