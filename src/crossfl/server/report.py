"""What a finished (or interrupted) run shows: plots in the run directory and summary tables.
Everything is derived from metrics.jsonl: the records a resumed run kept, read as the models
of crossfl.server.records (telemetry.live_records). So `crossfl report RUN [RUN ...]` works on
any run, and several runs overlay in one loss-vs-time plot.

Every time is seconds since the run started (the driver's clock: wall, or a replay's virtual
time), in the plots as in the tables, so the loss plot and the timeline line up. Every table
fits 80 columns (site names are never cut; headers wrap); ``report.txt`` in the run directory
keeps the same tables, written where no terminal narrows them.

TensorBoard and MLflow are not installed here, so the report is plain files: PNG plots and
rich tables."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossfl.atomic import atomic_write_text
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
from crossfl.tables import fit, named_table

FAILED_COLOR = "#c0392b"  # a task that failed or timed out: submitted -> given up
PHASES = (
    ("queue/start", "queue_s", "#bbbbbb"),
    ("load", "load_s", "#f4a259"),
    ("train", "train_s", "#5b8e7d"),
    ("transfer", "transfer_s", "#4f6d7a"),
)
SERVER_LANE = "server"
SERVER_PHASES = (("evaluate", "#8e6bb0"), ("aggregate", "#c0504d"))
FORMULA_TASK = "name_conversion-s2f"


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
    """Validation loss against time since the run started, one line per strategy (or per run
    given in ``labelled``), from the untrained baseline (at the moment its evaluation came
    back) on; for one run, the share of answer-value tokens predicted right on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    accuracy: list[tuple[float, float]] = []
    for label, recs in labelled or [("", records)]:
        base = baseline_of(recs)
        for r in rounds_of(recs):
            key = f"{label} ({r.strategy})" if label else r.strategy
            if base is not None and not series[key]:
                series[key].append((base.elapsed_s, base.val_loss))
            series[key].append((r.elapsed_s, r.val_loss))
        if labelled is None:
            evals = ([base] if base is not None else []) + rounds_of(recs)
            accuracy = [
                (e.elapsed_s, acc) for e in evals if (acc := e.answer_accuracy()) is not None
            ]
    everything = [r for _l, recs in (labelled or [("", records)]) for r in recs]
    longest = max((t for rows in series.values() for t, _ in rows), default=0.0)
    xlabel, unit = time_axis(everything, longest)
    for key, rows in series.items():
        ax.plot([t / unit for t, _ in rows], [v for _, v in rows], marker="o", label=key)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss")
    ax.set_title(f"validation loss vs {xlabel.split(' since')[0]}")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if accuracy:
        right = ax.twinx()
        (line,) = right.plot(
            [t / unit for t, _ in accuracy],
            [100 * a for _, a in accuracy],
            marker="s",
            linestyle="--",
            color="#5b8e7d",
            label="answer tokens right (%)",
        )
        right.set_ylabel("answer tokens right (%)")
        right.set_ylim(0, 100)
        handles, labels = [*handles, line], [*labels, line.get_label()]
    ax.legend(handles, labels, loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def server_spans(records: list[AnyRecord]) -> list[tuple[str, float, float]]:
    """(phase, start, seconds) of the server's own work: each evaluation (sent to result) and
    each aggregation, in run time; records written before these were timed are left out."""
    spans = [
        ("evaluate", e.started_s, e.elapsed_s - e.started_s)
        for e in of_kind(records, EvalRecord)
        if e.started_s is not None
    ]
    spans += [
        ("aggregate", a.started_s, a.elapsed_s - a.started_s)
        for a in of_kind(records, AggregationRecord)
        if a.started_s is not None
    ]
    return sorted(spans, key=lambda s: s[1])


def timeline_sites(records: list[AnyRecord]) -> list[str]:
    """The timeline's lanes: every site with a task, a site whose tasks all failed or timed
    out included."""
    return sorted({t.site for t in of_kind(records, TaskRecord)})


def plot_site_timeline(records: list[AnyRecord], out: Path) -> Path:
    """Per site, where each task's time went; below them, the server's evaluations and
    aggregations: the gaps between rounds. Time since the run started, as the loss plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    every = of_kind(records, TaskRecord)
    tasks = [t for t in every if t.status == "ok"]
    sites = timeline_sites(records)
    server = server_spans(records)
    lanes = ([SERVER_LANE] if server else []) + sites
    longest = max(
        [t.submitted_rel_s + (t.received_at - t.submitted_at) for t in every]
        + [s + w for _, s, w in server],
        default=0.0,
    )
    xlabel, unit = time_axis(records, longest)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * max(1, len(lanes))))
    for row, site in enumerate(lanes):
        if site == SERVER_LANE:
            # an aggregation takes milliseconds: drawn at least 0.5% of the axis wide, and over
            # the evaluation that follows it
            floor = 0.005 * max((s + w for _, s, w in server), default=1.0)
            for name, color in SERVER_PHASES:
                spans = [
                    (s / unit, max(w, floor) / unit) for phase, s, w in server if phase == name
                ]
                ax.broken_barh(spans, (row - 0.35, 0.7), facecolors=color)
            continue
        for task in (t for t in tasks if t.site == site):
            start = task.submitted_rel_s
            for _label, key, color in PHASES:
                width = max(0.0, float(getattr(task, key) or 0.0))
                ax.broken_barh([(start / unit, width / unit)], (row - 0.35, 0.7), facecolors=color)
                start += width
        for task in (t for t in every if t.site == site and t.status != "ok"):
            start, width = task.submitted_rel_s, task.received_at - task.submitted_at
            ax.broken_barh(
                [(start / unit, width / unit)],
                (row - 0.35, 0.7),
                facecolors="none",
                edgecolors=FAILED_COLOR,
                hatch="//",
            )
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_xlabel(xlabel)
    ax.set_title("per-site timeline: where the time went")
    legend = [(lbl, c) for lbl, _k, c in PHASES] + (list(SERVER_PHASES) if server else [])
    failed = Patch(facecolor="none", edgecolor=FAILED_COLOR, hatch="//", label="failed")
    ax.legend(
        handles=[Patch(color=c, label=lbl) for lbl, c in legend] + [failed],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.25),
        ncol=min(5, len(legend) + 1),
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
    import matplotlib.pyplot as plt

    fig = bytes_figure(records)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bytes_figure(records: list[AnyRecord]) -> Any:
    """Adapter MB down and up per round; the legend sits below the axes, clear of the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = bytes_by_round(records)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
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
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


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

    loss = Table(title=f"run {run_dir.name}", caption=EVAL_CAPTION)
    for col in ("round", "val loss", "answer tokens", "formula tokens", "exact", "at (s)"):
        loss.add_column(col, justify="right")
    for r in [*([base] if base else []), *rounds]:
        loss.add_row(
            "untrained" if r.kind == "baseline" else str(r.round),
            f"{r.val_loss:.4f}",
            _pct(r.answer_accuracy()),
            _pct(r.answer_accuracy(FORMULA_TASK)),
            _em(r),
            f"{r.elapsed_s:.1f}",
        )

    names = sorted({t.site for t in tasks})
    per_site = named_table("sites: tasks", names)
    for col in ("ok", "failed", "rejected", "late", "retries", "samples"):
        per_site.add_column(col, justify="right")
    times = named_table("sites: mean seconds per finished task, MB moved", names)
    for col in ("queue/start", "load", "train", "MB up+down"):
        times.add_column(col, justify="right")
    for site in names:
        mine = [t for t in tasks if t.site == site]
        ok = [t for t in mine if t.status == "ok"]

        def mean(key: str, rows: list[TaskRecord] = ok) -> str:
            return (
                f"{sum(float(getattr(t, key) or 0) for t in rows) / len(rows):.2f}" if rows else "-"
            )

        def count(status: str, rows: list[TaskRecord] = mine) -> str:
            return str(sum(1 for t in rows if t.status == status))

        mb = sum((t.bytes_up or 0) + t.bytes_down for t in mine) / 1e6
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
        times.add_row(site, mean("queue_s"), mean("load_s"), mean("train_s"), f"{mb:.2f}")

    moved = Table(title="adapter bytes per round (async runs: per task number), training tasks")
    for col in ("round", "MB down", "MB up", "transport"):
        moved.add_column(col, justify="right")
    for rnd, (down, up) in bytes_by_round(records).items():
        modes = sorted({t.transport_up or t.transport for t in tasks if t.round == rnd})
        moved.add_row(str(rnd), f"{down / 1e6:.3f}", f"{up / 1e6:.3f}", ",".join(modes))
    return [loss, per_site, times, allocation_table(tasks), moved, summary_table(records)]


EVAL_CAPTION = (
    "answer tokens (formula tokens): the share of the tokens of every answer's value (of "
    "every molecular formula) predicted right given the ones before; exact: whole formulas "
    "generated right; at: seconds since the run started"
)


LOW_VALUE = ("device type", "late", "rejected", "retries", "transport", "exact")
"""Columns the console leaves out, in this order, of a table too wide for 80 columns (long
site names); report.txt keeps them."""


def _span(values: list[int]) -> str:
    """`4`, or `2-4` where the tasks differed."""
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def allocation_table(tasks: list[TaskRecord]) -> Table:
    """Per site, what its finished tasks held and used: the nodes charged, the ranks and the
    devices, the device-busy fraction (mean over its tasks) and node-hours (all its tasks)."""
    names = sorted({t.site for t in tasks})
    table = named_table("allocation: what each site held and used", names)
    for col in ("nodes", "ranks", "devices", "device type", "busy", "node-hours"):
        table.add_column(col, justify="left" if col == "device type" else "right")
    bases: set[str] = set()
    for site in names:
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
    table.caption = "busy: device-s in training steps / (devices held x training loop)" + (
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
    evals = rounds or ([base] if base else [])
    last = evals[-1] if evals else None
    strategy = last.strategy if last else "-"
    driver = last.driver if last else "sync"
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
        for what, task in (("answer tokens right", None), ("formula tokens right", FORMULA_TASK)):
            before, after = base.answer_accuracy(task), rounds[-1].answer_accuracy(task)
            if before is not None and after is not None:
                table.add_row(what, f"{before:.1%} -> {after:.1%}")
    wall = max([r.elapsed_s for r in rounds] + [a.elapsed_s for a in aggs], default=0.0)
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
    value = record.exact_match.get(FORMULA_TASK)
    return _pct(value)


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def learned_line(records: list[AnyRecord]) -> str | None:
    """One line: what improved from the untrained adapter to the last evaluation, and by how
    much (the answer tokens a chemist reads, then the loss); None before any round."""
    base, rounds = baseline_of(records), rounds_of(records)
    if base is None or not rounds:
        return None
    last = rounds[-1]
    parts = []
    before, after = base.answer_accuracy(), last.answer_accuracy()
    if before is not None and after is not None:
        parts.append(
            f"answer tokens right {before:.0%} -> {after:.0%} ({100 * (after - before):+.0f} points)"
        )
    parts.append(f"loss {base.val_loss:.2f} -> {last.val_loss:.2f}")
    rounds_done = "round" if last.round == 1 else "rounds"
    return f"after {last.round} {rounds_done}: " + ", ".join(parts)


def progress_of(run_dir: Path) -> tuple[int, int, bool]:
    """(rounds done, rounds planned, finished) of a run, from its checkpoint and experiment."""
    from crossfl.server import checkpoint as ckpt
    from crossfl.yamlio import load_mapping

    meta = ckpt.load_meta(run_dir / "checkpoint") or {}
    planned = 0
    if (run_dir / "experiment.yaml").is_file():
        planned = int(load_mapping(run_dir / "experiment.yaml").get("rounds") or 0)
    return int(meta.get("round", 0)), planned, ckpt.is_finished(run_dir / "checkpoint")


def resume_hint(run_dir: Path) -> str:
    """How far a stopped run got, and the command that continues it (one line: never wrap)."""
    done, planned, _ = progress_of(run_dir)
    kept = (
        f"checkpoint after round {done} of {planned} kept" if done else "no round was checkpointed"
    )
    return f"{kept}; continue with `crossfl resume {run_dir}`"


def print_report(run_dir: Path, console: Console | None = None) -> None:
    """The summary tables (to ``console`` and to ``report.txt`` in the run directory), then
    what the run learned; an unfinished run says how far it got and how to continue it."""
    console = console or Console()
    tables = summary_tables(run_dir)
    whole = Console(file=io.StringIO(), width=160, color_system=None)
    for table in tables:
        whole.print(table)
    atomic_write_text(run_dir / "report.txt", whole.file.getvalue())  # type: ignore[attr-defined]
    for table in tables:
        console.print(fit(table, LOW_VALUE, width=console.width))
    line = learned_line(live_records(run_dir / "metrics.jsonl"))
    if line:
        console.print(line, highlight=False)
    done, planned, finished = progress_of(run_dir)
    if not finished and planned:
        console.print(f"unfinished: round {done} of {planned}", highlight=False)
        console.print(resume_hint(run_dir), highlight=False, soft_wrap=True)
