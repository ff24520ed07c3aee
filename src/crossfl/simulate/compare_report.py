"""A comparison's tables (80 columns), its summary file and its plot."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from crossfl.simulate.verdict import Comparison, Ratio


def tables(c: Comparison) -> list[Table]:
    """Per variant: reached, median and IQR of the time to target (a censored run at the
    horizon), median node-hours; per pair: the ratios with their 95% intervals."""
    hours = c.horizon_s > 3 * 3600  # minutes for a short stage (the reproduction)
    unit, div = ("h", 3600.0) if hours else ("min", 60.0)
    per = Table(
        title=f"to loss {c.target:.4f}, {c.seeds} seeds, "
        f"horizon {c.horizon_s / div:.0f} {unit} (virtual)"
    )
    for col in ("variant", "reached", f"median {unit}", f"IQR {unit}", "node-h"):
        per.add_column(col, justify="left" if col == "variant" else "right")
    for label, runs in c.outcomes.items():
        times = np.array(c.times(label)) / div
        q1, med, q3 = np.percentile(times, [25, 50, 75]) if len(times) else (math.nan,) * 3
        per.add_row(
            label,
            f"{sum(o.reached for o in runs)}/{len(runs)}",
            f"{med:.2f}",
            f"{q1:.2f}-{q3:.2f}",
            f"{np.median([o.node_hours for o in runs]):.3g}" if runs else "-",
        )
    pairs = Table(title="paired ratios: geo-mean [95% BCa], ratio of means")
    for col in ("A / B", "time", "of means", "node-h"):
        pairs.add_column(col, justify="left" if col == "A / B" else "right")
    for (a, b), r in c.ratios.items():
        t, nh = r["time"], r["node_hours"]
        pairs.add_row(f"{a} / {b}", _ratio_cell(t), _num(t.of_means), _ratio_cell(nh))
    out = [per, pairs]
    if c.tuning:
        tune = Table(title=f"tuning on seeds {', '.join(map(str, c.tuning_seeds))} (geo-mean h)")
        for col in ("variant", "candidates (chosen first)"):
            tune.add_column(col)
        for label, scores in c.tuning.items():
            ranked = sorted(scores, key=lambda s: s[1])
            tune.add_row(label, "; ".join(f"{_kw(kw)}: {score / 3600:.2f}" for kw, score in ranked))
        out.append(tune)
    return out


def _num(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def _ratio_cell(r: Ratio) -> str:
    if math.isnan(r.gmean):
        return "-"
    return f"{r.gmean:.2f}" + ("" if math.isnan(r.low) else f" [{r.low:.2f}, {r.high:.2f}]")


def _kw(kw: dict[str, Any]) -> str:
    short = {
        "t_sync": "t",
        "theta": "th",
        "warm_up_steps": "w",
        "max_local_steps": "max",
        "min_local_steps": "min",
        "alpha": "a",
        "K": "K",
    }
    return ",".join(
        f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
        for k, v in kw.items()
        if k in short
    )


def write_summary(c: Comparison, out: Path) -> Path:
    from crossfl.atomic import atomic_write_text

    data = {
        "stage": c.stage,
        "target": c.target,
        "reference_loss": c.reference_loss,
        "seeds": c.seeds,
        "horizon_s": c.horizon_s,
        "work_unit": c.work_unit,
        "chosen": c.chosen,
        "tuning_seeds": list(c.tuning_seeds),
        "tuning": {k: [[kw, s] for kw, s in v] for k, v in c.tuning.items()},
        "ratios": {
            f"{a}/{b}": {k: asdict(r) for k, r in v.items()} for (a, b), v in c.ratios.items()
        },
        "outcomes": {k: [asdict(o) for o in v] for k, v in c.outcomes.items()},
        "wall_s": c.wall_s,
        "replays": c.replays,
        "replay_wall_s": c.replay_wall_s,
        "verdict": c.verdict(),
    }
    atomic_write_text(out, json.dumps(data, indent=1, default=str))
    return out


def comparison_plot(c: Comparison, out: Path) -> Path:
    """Validation loss against virtual hours, one line per variant (its median-time seed,
    from its first evaluation after training), and the time to target per seed and
    variant; log axes where the spread needs them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, runs in c.outcomes.items():
        if not runs:
            continue
        times = [o.time_or(c.horizon_s) for o in runs]
        median_run = runs[int(np.argsort(times)[len(times) // 2])]
        pts = [(t / 3600, v) for t, v in median_run.curve if t > 0]  # from the first round
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
        right.scatter([label] * len(times), np.array(times) / 3600, s=12, alpha=0.7)
    left.axhline(c.target, color="k", lw=0.8, ls="--", label="target")
    left.set_xscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    left.xaxis.set_major_locator(FixedLocator([0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100]))
    left.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlabel("virtual time since start (hours, log)")
    left.set_ylabel("validation loss")
    left.set_title("loss vs virtual time (median seed per variant)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    spread = [o.time_or(c.horizon_s) for runs in c.outcomes.values() for o in runs]
    if spread and max(spread) > 20 * max(min(spread), 1.0):
        right.set_yscale("log")
    right.axhline(c.horizon_s / 3600, color="r", lw=0.8, ls=":", label="horizon (censored)")
    right.set_ylabel("virtual hours to target")
    right.set_title(f"time to target, {c.seeds} seeds")
    right.tick_params(axis="x", rotation=30)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
