"""No scheduler: the endpoint's workers run on this machine (Parsl's LocalProvider), one
block, no pilot jobs and no batch scripts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crossfl.schedulers import register
from crossfl.schedulers.base import Fields, Scheduler

if TYPE_CHECKING:
    from crossfl.sites import Site


@register
class Local(Scheduler):
    name = "local"
    title = "a local site"
    batch = False
    provider = "LocalProvider"

    def provider_fields(self, site: Site, var: dict[str, str]) -> Fields:
        return [("init_blocks", "1"), ("min_blocks", "0"), ("max_blocks", "1")]
