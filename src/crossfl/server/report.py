"""What a finished (or interrupted) run shows: plots in the run directory and a summary table.
Everything is derived from metrics.jsonl, so `crossfl report RUN` works on any run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossfl.server.telemetry import read_metrics

PHASES = (("queue/start", "queue_s", "#bbbbbb"), ("load", "load_s", "#f4a259"),
          ("train", "train_s", "#5b8e7d"), ("transfer", "transfer_s", "#4f6d7a"))


def plot_loss_vs_time(records: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in records if r.get("kind") == "round"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rounds:
        by_strategy[r.get("strategy", "fedavg")].append(r)
    for strategy, rows in by_strategy.items():
        ax.plot([r["elapsed_s"] for r in rows], [r["val_loss"] for r in rows], marker="o", label=strategy)
    ax.set_xlabel("wall-clock time since start (s)")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss vs wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_site_timeline(records: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tasks = [r for r in records if r.get("kind") == "task" and r.get("status") == "ok"]
    sites = sorted({t["site"] for t in tasks})
    t0 = min((t["submitted_rel_s"] for t in tasks), default=0.0)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * max(1, len(sites))))
    for row, site in enumerate(sites):
        for task in (t for t in tasks if t["site"] == site):
            start = task["submitted_rel_s"] - t0
            for _label, key, color in PHASES:
                width = max(0.0, float(task.get(key) or 0.0))
                ax.broken_barh([(start, width)], (row - 0.35, 0.7), facecolors=color)
                start += width
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xlabel("time since start (s)")
    ax.set_title("per-site timeline: where the time went")
    ax.legend(handles=[Patch(color=c, label=lbl) for lbl, _k, c in PHASES], loc="upper center",
              bbox_to_anchor=(0.5, -0.25), ncol=len(PHASES), frameon=False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_plots(run_dir: Path) -> list[Path]:
    records = read_metrics(run_dir / "metrics.jsonl")
    if not any(r.get("kind") == "round" for r in records):
        return []
    return [plot_loss_vs_time(records, run_dir / "loss_vs_time.png"),
            plot_site_timeline(records, run_dir / "site_timeline.png")]


def summary_tables(run_dir: Path) -> list[Table]:
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r.get("kind") == "round"]
    tasks = [r for r in records if r.get("kind") == "task"]
    base = next((r for r in records if r.get("kind") == "baseline"), None)

    loss = Table(title=f"run {run_dir.name}")
    for col in ("round", "val loss", "formula exact match", "elapsed (s)"):
        loss.add_column(col, justify="right")
    if base:
        loss.add_row("untrained", f"{base['val_loss']:.4f}", _em(base), "-")
    for r in rounds:
        loss.add_row(str(r["round"]), f"{r['val_loss']:.4f}", _em(r), f"{r['elapsed_s']:.1f}")

    per_site = Table(title="sites")
    for col in ("site", "tasks ok", "failed", "mean queue/start (s)", "mean load (s)", "mean train (s)",
                "MB up+down", "samples"):
        per_site.add_column(col, justify="right")
    for site in sorted({t["site"] for t in tasks}):
        mine = [t for t in tasks if t["site"] == site]
        ok = [t for t in mine if t.get("status") == "ok"]

        def mean(key: str, rows: list[dict[str, Any]] = ok) -> str:
            return f"{sum(float(t.get(key) or 0) for t in rows) / len(rows):.2f}" if rows else "-"

        moved = sum((t.get("bytes_up") or 0) + (t.get("bytes_down") or 0) for t in ok) / 1e6
        samples = ok[-1].get("num_samples", "-") if ok else "-"
        per_site.add_row(site, str(len(ok)), str(len(mine) - len(ok)), mean("queue_s"), mean("load_s"),
                         mean("train_s"), f"{moved:.2f}", str(samples))
    return [loss, per_site]


def _em(record: dict[str, Any]) -> str:
    em = record.get("exact_match") or {}
    value = em.get("name_conversion-s2f")
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def print_report(run_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    for table in summary_tables(run_dir):
        console.print(table)
