"""What a finished (or interrupted) run shows: plots in the run directory and summary tables.
Everything is derived from metrics.jsonl: the records a resumed run kept, read as the models
of crossfl.server.records (telemetry.live_records). So `crossfl report RUN [RUN ...]` works on
any run, and several runs overlay in one loss-vs-time plot.

TensorBoard and MLflow are not installed here, so the report is plain files: PNG plots and
rich tables."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crossfl.server.records import (
    AggregationRecord,
    AnyRecord,
    EvalRecord,
    PilotRecord,
    ResumeRecord,
    SimulationRecord,
    TaskRecord,
)
from crossfl.server.telemetry import live_records, of_kind

FAILED_COLOR = "#c0392b"  # a task that failed or timed out: submitted -> given up
PHASES = (
    ("queue/start", "queue_s", "#bbbbbb"),
    ("load", "load_s", "#f4a259"),
    ("train", "train_s", "#5b8e7d"),
    ("transfer", "transfer_s", "#4f6d7a"),
)


def baseline_of(records: list[AnyRecord]) -> EvalRecord | None:
    return next((r for r in of_kind(records, EvalRecord) if r.kind == "baseline"), None)


def rounds_of(records: list[AnyRecord]) -> list[EvalRecord]:
    return [r for r in of_kind(records, EvalRecord) if r.kind == "round"]


def time_axis(records: list[AnyRecord], longest_s: float) -> tuple[str, float]:
    """The x label and the divisor: virtual time for a replay (crossfl simulate), in hours
    when it runs past three."""
    virtual = bool(of_kind(records, SimulationRecord) or of_kind(records, PilotRecord))
    what = "virtual time (replay)" if virtual else "wall-clock time"
    if longest_s > 3 * 3600:
        return f"{what} since start (h)", 3600.0
    return f"{what} since start (s)", 1.0


def plot_loss_vs_time(
    records: list[AnyRecord], out: Path, labelled: list[tuple[str, list[AnyRecord]]] | None = None
) -> Path:
    """Validation loss against wall-clock time, one line per strategy (or per run given in
    ``labelled``), starting from the untrained baseline at t=0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for label, recs in labelled or [("", records)]:
        base = baseline_of(recs)
        for r in rounds_of(recs):
            key = f"{label} ({r.strategy})" if label else r.strategy
            if base is not None and not series[key]:
                series[key].append((0.0, base.val_loss))
            series[key].append((r.elapsed_s, r.val_loss))
    everything = [r for _l, recs in (labelled or [("", records)]) for r in recs]
    longest = max((t for rows in series.values() for t, _ in rows), default=0.0)
    xlabel, unit = time_axis(everything, longest)
    for key, rows in series.items():
        ax.plot([t / unit for t, _ in rows], [v for _, v in rows], marker="o", label=key)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(f"validation loss vs {xlabel.split(' since')[0]}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def timeline_sites(records: list[AnyRecord]) -> list[str]:
    """The timeline's lanes: every site with a task, a site whose tasks all failed or timed
    out included."""
    return sorted({t.site for t in of_kind(records, TaskRecord)})


def plot_site_timeline(records: list[AnyRecord], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    every = of_kind(records, TaskRecord)
    tasks = [t for t in every if t.status == "ok"]
    sites = timeline_sites(records)
    t0 = min((t.submitted_rel_s for t in every), default=0.0)
    longest = max(
        (t.submitted_rel_s - t0 + (t.received_at - t.submitted_at) for t in every), default=0.0
    )
    xlabel, unit = time_axis(records, longest)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * max(1, len(sites))))
    for row, site in enumerate(sites):
        for task in (t for t in tasks if t.site == site):
            start = task.submitted_rel_s - t0
            for _label, key, color in PHASES:
                width = max(0.0, float(getattr(task, key) or 0.0))
                ax.broken_barh([(start / unit, width / unit)], (row - 0.35, 0.7), facecolors=color)
                start += width
        for task in (t for t in every if t.site == site and t.status != "ok"):
            start, width = task.submitted_rel_s - t0, task.received_at - task.submitted_at
            ax.broken_barh(
                [(start / unit, width / unit)],
                (row - 0.35, 0.7),
                facecolors="none",
                edgecolors=FAILED_COLOR,
                hatch="//",
            )
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xlabel(xlabel)
    ax.set_title("per-site timeline: where the time went")
    ax.legend(
        handles=[Patch(color=c, label=lbl) for lbl, _k, c in PHASES]
        + [Patch(facecolor="none", edgecolor=FAILED_COLOR, hatch="//", label="failed")],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.25),
        ncol=len(PHASES) + 1,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bytes_by_round(records: list[AnyRecord]) -> dict[int, tuple[int, int]]:
    """Adapter bytes (down to sites, up from sites) per round, training tasks only."""
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for t in of_kind(records, TaskRecord):
        out[t.round][0] += t.bytes_down
        out[t.round][1] += t.bytes_up or 0
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def plot_bytes(records: list[AnyRecord], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bytes_by_round(records)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = list(rows)
    ax.bar(
        [x - 0.2 for x in xs], [rows[x][0] / 1e6 for x in xs], width=0.4, label="down (to sites)"
    )
    ax.bar(
        [x + 0.2 for x in xs], [rows[x][1] / 1e6 for x in xs], width=0.4, label="up (from sites)"
    )
    ax.set_xlabel("round (async: task number)")
    ax.set_ylabel("adapter MB moved")
    ax.set_title("bytes per round")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_plots(run_dir: Path) -> list[Path]:
    records = live_records(run_dir / "metrics.jsonl")
    if not rounds_of(records):
        return []
    return [
        plot_loss_vs_time(records, run_dir / "loss_vs_time.png"),
        plot_site_timeline(records, run_dir / "site_timeline.png"),
        plot_bytes(records, run_dir / "bytes_per_round.png"),
    ]


def compare_plot(run_dirs: list[Path], out: Path) -> Path:
    """One loss-vs-time plot overlaying several runs (e.g. fedavg against fedasync)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_loss_vs_time(
        [], out, [(d.name, live_records(d / "metrics.jsonl")) for d in run_dirs]
    )


def summary_tables(run_dir: Path) -> list[Table]:
    records = live_records(run_dir / "metrics.jsonl")
    rounds = rounds_of(records)
    tasks = of_kind(records, TaskRecord)
    base = baseline_of(records)

    loss = Table(title=f"run {run_dir.name}")
    for col in ("round", "val loss", "formula exact match", "elapsed (s)"):
        loss.add_column(col, justify="right")
    if base:
        loss.add_row("untrained", f"{base.val_loss:.4f}", _em(base), "-")
    for r in rounds:
        loss.add_row(str(r.round), f"{r.val_loss:.4f}", _em(r), f"{r.elapsed_s:.1f}")

    per_site = Table(title="sites: tasks")
    for col in ("site", "ok", "failed", "rejected", "late", "retries", "samples"):
        per_site.add_column(col, justify="left" if col == "site" else "right")
    times = Table(title="sites: mean seconds per finished task, MB moved")
    for col in ("site", "queue/start", "load", "train", "MB up+down"):
        times.add_column(col, justify="left" if col == "site" else "right")
    for site in sorted({t.site for t in tasks}):
        mine = [t for t in tasks if t.site == site]
        ok = [t for t in mine if t.status == "ok"]

        def mean(key: str, rows: list[TaskRecord] = ok) -> str:
            return (
                f"{sum(float(getattr(t, key) or 0) for t in rows) / len(rows):.2f}" if rows else "-"
            )

        def count(status: str, rows: list[TaskRecord] = mine) -> str:
            return str(sum(1 for t in rows if t.status == status))

        moved = sum((t.bytes_up or 0) + t.bytes_down for t in mine) / 1e6
        retries = sum(max(0, t.attempts - 1) for t in mine)
        samples = str(ok[-1].num_samples) if ok else "-"
        per_site.add_row(
            site,
            str(len(ok)),
            count("failed"),
            count("rejected"),
            count("late"),
            str(retries),
            samples,
        )
        times.add_row(site, mean("queue_s"), mean("load_s"), mean("train_s"), f"{moved:.2f}")

    moved = Table(title="adapter bytes per round (async runs: per task number), training tasks")
    for col in ("round", "MB down", "MB up", "transport"):
        moved.add_column(col, justify="right")
    for rnd, (down, up) in bytes_by_round(records).items():
        modes = sorted({t.transport_up or t.transport for t in tasks if t.round == rnd})
        moved.add_row(str(rnd), f"{down / 1e6:.3f}", f"{up / 1e6:.3f}", ",".join(modes))
    return [loss, per_site, times, allocation_table(tasks), moved, summary_table(records)]


def _span(values: list[int]) -> str:
    """`4`, or `2-4` where the tasks differed."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def allocation_table(tasks: list[TaskRecord]) -> Table:
    """Per site, what its finished tasks held and used: the nodes charged, the ranks and the
    devices, the device-busy fraction (mean over its tasks) and node-hours (all its tasks)."""
    table = Table(title="allocation: what each site held and used")
    for col in ("site", "nodes", "ranks", "devices", "device type", "busy", "node-hours"):
        table.add_column(col, justify="left" if col in ("site", "device type") else "right")
    bases: set[str] = set()
    for site in sorted({t.site for t in tasks}):
        mine = [t for t in tasks if t.site == site]
        done = [t for t in mine if t.ranks is not None]
        busy = [t.device_busy for t in done if t.device_busy is not None]
        kinds = sorted({t.device_type for t in done if t.device_type})
        bases.update(t.node_hours_basis for t in mine if t.node_hours_basis)
        table.add_row(
            site,
            _span([t.nodes for t in mine]),
            _span([t.ranks for t in done if t.ranks]),
            _span([t.devices_held for t in done if t.devices_held]),
            ",".join(kinds) or "-",
            f"{sum(busy) / len(busy):.0%}" if busy else "-",
            f"{sum(t.node_hours for t in mine):.4f}",
        )
    table.caption = "busy: accelerator-s in training steps / (devices held x task wall)" + (
        "; node-hours: " + "; ".join(sorted(bases)) if bases else ""
    )
    return table


def summary_table(records: list[AnyRecord]) -> Table:
    tasks = of_kind(records, TaskRecord)
    rounds = rounds_of(records)
    base = baseline_of(records)
    aggs = of_kind(records, AggregationRecord)
    table = Table(title="summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    last = (rounds or ([base] if base else []))[-1:] or [None]
    strategy = last[0].strategy if last[0] else "-"
    driver = last[0].driver if last[0] else "sync"
    table.add_row("strategy / driver", f"{strategy} / {driver}")
    table.add_row("aggregations", str(len(aggs) or len(rounds)))
    table.add_row(
        "client tasks (ok / all)", f"{sum(t.status == 'ok' for t in tasks)} / {len(tasks)}"
    )
    if base and rounds:
        b, f = base.val_loss, rounds[-1].val_loss
        table.add_row(
            "validation loss", f"{b:.4f} -> {f:.4f} ({(b - f) / b:+.1%} lower)" if b else f"{f:.4f}"
        )
    wall = max((r.elapsed_s for r in [*rounds, *aggs]), default=0.0)
    table.add_row("wall-clock (s)", f"{wall:.1f}")
    busy = sum(t.worker_s or 0.0 for t in tasks)
    table.add_row("site compute (task-s)", f"{busy:.1f}")
    stale = [v for a in aggs for v in a.staleness.values()]
    if stale:
        table.add_row("staleness mean / max", f"{sum(stale) / len(stale):.2f} / {max(stale)}")
    table.add_row("node-hours", f"{sum(t.node_hours for t in tasks):.4f}")
    pilots = of_kind(records, PilotRecord)
    if pilots:  # a replay: what the pilots held, idle included, and what they waited
        waits = [p.queue_wait_s for p in pilots if p.queue_wait_s is not None]
        table.add_row("node-hours held (pilots)", f"{sum(p.node_hours for p in pilots):.2f}")
        table.add_row(
            "pilots / mean queue wait (s)",
            f"{len(pilots)} / {sum(waits) / len(waits):.0f}" if waits else str(len(pilots)),
        )
    moved = sum((t.bytes_up or 0) + t.bytes_down for t in tasks)
    table.add_row("adapter MB moved", f"{moved / 1e6:.2f}")
    resumes = len(of_kind(records, ResumeRecord))
    if resumes:
        table.add_row("resumed", f"{resumes} time(s)")
    return table


def _em(record: EvalRecord) -> str:
    value = record.exact_match.get("name_conversion-s2f")
    return f"{value:.3f}" if value is not None else "-"


def print_report(run_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    for table in summary_tables(run_dir):
        console.print(table)
