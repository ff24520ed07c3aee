"""The experiment's sites and their training-set sizes, as strategies weigh them.

APPFL's server knows both before training: ``num_clients`` from its configuration and each
client's sample count from a ``get_sample_size`` task (``set_client_sample_size``). Here the
driver registers them with :meth:`Strategy.register_sites`; until it does, a strategy falls
back to the sites whose updates it has seen so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Weighting = Literal["equal", "num_samples"]


def checked_counts(sample_counts: Mapping[str, int]) -> dict[str, int]:
    """``sample_counts`` as a plain dict; ValueError for no site or a negative count."""
    counts = {str(site): int(n) for site, n in sample_counts.items()}
    if not counts:
        raise ValueError("register_sites needs every site of the experiment, got none")
    negative = sorted(s for s, n in counts.items() if n < 0)
    if negative:
        raise ValueError(f"negative sample counts registered for {negative}")
    return counts


class SiteCounts:
    """Registered sample counts per site (else the counts updates reported), and the weights
    APPFL's asynchronous aggregators derive from them."""

    def __init__(self) -> None:
        self.registered: dict[str, int] = {}  # every site, from the driver, before training
        self.seen: dict[str, int] = {}  # reported by arriving updates (used until registered)

    def register(self, sample_counts: Mapping[str, int]) -> None:
        """Every site with its training-set size (see :func:`checked_counts`)."""
        self.registered = checked_counts(sample_counts)

    def saw(self, site: str, num_samples: int) -> None:
        """Note what an arriving update reported."""
        self.seen[site] = int(num_samples)

    @property
    def counts(self) -> dict[str, int]:
        return self.registered or self.seen

    def num_sites(self) -> int:
        """APPFL's ``num_clients``: the registered sites, else those seen (at least 1)."""
        return max(1, len(self.counts))

    def weight(self, site: str, mode: Weighting) -> float:
        """The site's client weight: its share of all sites' samples (``num_samples``, when
        its count is known and the total is positive) or ``1 / num_sites`` (as APPFL)."""
        counts = self.counts
        total = sum(counts.values())
        if mode == "num_samples" and site in counts and total > 0:
            return counts[site] / total
        return 1.0 / self.num_sites()

    def state_dict(self) -> dict[str, Any]:
        return {"registered": dict(self.registered), "seen": dict(self.seen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.registered = {str(k): int(v) for k, v in state.get("registered", {}).items()}
        self.seen = {str(k): int(v) for k, v in state.get("seen", {}).items()}
