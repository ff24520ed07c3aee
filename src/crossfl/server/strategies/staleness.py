"""Staleness discounts s(u) for asynchronous updates that are u global versions behind."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from crossfl.server.strategies.base import StrategyParams

StalenessName = Literal["constant", "polynomial", "hinge", "harmonic", "exponential"]


class StalenessParams(StrategyParams):
    """``staleness_fn`` with its constants ``a`` and ``b`` (APPFL's names and formulas).

    constant: 1; polynomial: (u+1)^-a; hinge: 1 if u <= b else 1/(a(u-b)+1);
    harmonic: 1/(1+a u); exponential: exp(-a u).
    """

    staleness_fn: StalenessName = "constant"
    a: float = Field(default=0.5, ge=0.0)
    b: float = Field(default=4.0, ge=0.0)

    def discount(self, staleness: int) -> float:
        """s(u) for ``u = staleness`` versions behind."""
        return staleness_discount(self.staleness_fn, staleness, self.a, self.b)


def staleness_discount(fn: StalenessName, staleness: int, a: float, b: float = 0.0) -> float:
    """The one staleness discount s(u) (every strategy that discounts asks it), for
    ``u = staleness`` versions behind; the formulas are in ``StalenessParams``."""
    u = max(0, int(staleness))
    if fn == "constant":
        return 1.0
    if fn == "polynomial":
        return float((u + 1) ** (-a))
    if fn == "hinge":
        return 1.0 if u <= b else 1.0 / (a * (u - b) + 1.0)
    if fn == "harmonic":
        return 1.0 / (1.0 + a * u)
    return math.exp(-a * u)
