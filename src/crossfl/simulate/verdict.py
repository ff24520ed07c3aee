"""A comparison's statistics and its verdict: paired ratios with BCa intervals
(``scipy.stats.bootstrap``), the censoring rule, the claim rule, the seeds it needs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossfl.simulate.outcome import ReplayOutcome

MIN_SEEDS = 10  # no verdict on fewer evaluation seeds
GAIN = 0.20  # the claim: at least this much sooner (upper bound of the ratio under 1 - GAIN)
RESAMPLES = 4999
CONFIDENCE = 0.95
PAIRS_TO = "fedqueue"  # every variant's ratio is to FedQueue (ours' to FedQueue+warm too)
VERDICT = (("ours", "fedqueue"), ("ours", "fedqueue+warm"))


@dataclass(frozen=True)
class Ratio:
    """A against B over paired seeds: geometric mean of per-seed ratios with its BCa 95%
    interval, and the ratio of means with its own."""

    n: int
    gmean: float
    low: float
    high: float
    of_means: float
    of_means_low: float
    of_means_high: float


def paired_ratio(a: list[float], b: list[float], seed: int = 0) -> Ratio:
    """Paired bootstrap (seeds resampled together) of the geometric mean of a_i / b_i and of
    mean(a) / mean(b), BCa 95% intervals (scipy.stats.bootstrap). With fewer than 2 seeds
    there is no interval (nan); with the same ratio on every seed it is that ratio."""
    from scipy import stats

    x, y = np.asarray(a, float), np.asarray(b, float)
    n = len(x)
    if n == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()) or (y <= 0).any():
        nan = math.nan
        return Ratio(n, nan, nan, nan, nan, nan, nan)

    def gmean(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.exp(np.mean(np.log(p / q), axis=axis))

    def of_means(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(p, axis=axis) / np.mean(q, axis=axis)

    def interval(statistic: Callable[..., np.ndarray]) -> tuple[float, float]:
        if n < 2:
            return math.nan, math.nan
        point = float(statistic(x, y))
        if np.ptp(x / y) == 0:  # every seed the same ratio: so is every resample
            return point, point
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # degenerate resamples: nan, reported as such
            res = stats.bootstrap(
                (x, y),
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=RESAMPLES,
                confidence_level=CONFIDENCE,
                method="BCa",
                random_state=np.random.default_rng(seed),
            )
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    g_low, g_high = interval(gmean)
    m_low, m_high = interval(of_means)
    return Ratio(n, float(gmean(x, y)), g_low, g_high, float(of_means(x, y)), m_low, m_high)


@dataclass
class Comparison:
    stage: str  # compare or reproduce
    target: float
    reference_loss: float
    seeds: int
    horizon_s: float
    work_unit: int
    outcomes: dict[str, list[ReplayOutcome]]
    tuning: dict[str, list[tuple[dict[str, Any], float]]]  # candidates and their scores
    chosen: dict[str, dict[str, Any]]
    ratios: dict[tuple[str, str], dict[str, Ratio]]
    tuning_seeds: tuple[int, ...] = ()
    wall_s: float = 0.0
    replays: int = 0
    replay_wall_s: float = 0.0

    def times(self, label: str) -> list[float]:
        return [o.time_or(self.horizon_s) for o in self.outcomes[label]]

    def verdict(self, gain: float = GAIN) -> str:
        """Ours against FedQueue (and FedQueue with our warm pilots): the claim rule."""
        if self.stage == "reproduce":
            return self.reproduction_verdict()
        if self.seeds < MIN_SEEDS:
            return (
                f"no verdict: {self.seeds} seed(s); a verdict needs at least {MIN_SEEDS} "
                "(run with --seeds 20)"
            )
        lines = []
        for a, b in VERDICT:
            if a not in self.outcomes or b not in self.outcomes:
                continue
            missed = sum(not o.reached for o in self.outcomes[a])
            t, nh = self.ratios[(a, b)]["time"], self.ratios[(a, b)]["node_hours"]
            head = f"{a} vs {b}: time x{t.gmean:.2f} {_ci(t)}, node-h x{nh.gmean:.2f} {_ci(nh)}"
            if missed:
                lines.append(f"{head}\n  no claim ({a} missed the target on {missed} seed(s))")
                continue
            ok = t.high < 1 - gain and nh.high <= 1.0
            lines.append(
                f"{head}\n  {gain:.0%} sooner at no more node-hours: "
                + ("claimed" if ok else "not shown")
            )
        return "\n".join(lines)

    def reproduction_verdict(self) -> str:
        """FedQueue's direction against FedAvg and FedAsync (its paper: sooner than both):
        the others' time ratio to FedQueue, above 1 when FedQueue is sooner."""
        if self.seeds < MIN_SEEDS:
            return f"no verdict: {self.seeds} seed(s); one needs at least {MIN_SEEDS}"
        lines = []
        for other in ("fedavg", "fedasync"):
            r = self.ratios.get((other, PAIRS_TO), {}).get("time")
            if r is None:
                continue
            if math.isnan(r.low):
                word = "undecided (no interval)"
            elif r.low > 1:
                word = "reproduced (FedQueue sooner)"
            elif r.high < 1:
                word = "NOT reproduced (FedQueue later)"
            else:
                word = "not reproduced (no difference shown)"
            lines.append(f"{other} vs fedqueue: time x{r.gmean:.2f} {_ci(r)}: {word}")
        return "\n".join(lines)


def _ci(r: Ratio) -> str:
    return "[-]" if math.isnan(r.low) else f"[{r.low:.2f}, {r.high:.2f}]"
