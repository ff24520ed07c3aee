"""Aggregation cost for 8 clients x LoRA adapters of a 7B-class model, side by side.

Adapter: r=16 on q, k, v, o of 32 layers with hidden size 4096 (Llama-2-7B shapes: every
projection is 4096 x 4096), so per projection A is 16 x 4096 and B is 4096 x 16:
32 * 4 * 2 * 16 * 4096 = 16,777,216 parameters = 67,108,864 bytes in float32 per client.

Measured in one run (median of a few repeats):
- APPFL 1.12 ``FedAvgAggregator`` on the dicts of tensors (sample-size weights, its defaults);
- crossfl ``fedavg`` on flat buffers (goal: at least 10x faster than APPFL);
- one ``torch.mean`` over a flat (clients, params) buffer of the same bytes (goal: crossfl
  within 2x of it);
- ``FlatSpec.flatten`` of one client's adapter, the cost of getting onto flat buffers, into a
  new buffer and into a reused one (a fresh 67 MB buffer pays its page faults on first touch).
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from crossfl.server.flat import FlatSpec
from crossfl.server.strategies import Update, get_strategy
from crossfl.tables import fit

CLIENTS = 8
LAYERS = 32
HIDDEN = 4096
RANK = 16
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
REPEATS = 5
APPFL_REPEATS = 3


def lora_shapes() -> dict[str, tuple[int, int]]:
    """PEFT's key names and shapes for the adapter described above."""
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(LAYERS):
        for proj in PROJECTIONS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            shapes[f"{prefix}.lora_A.weight"] = (RANK, HIDDEN)
            shapes[f"{prefix}.lora_B.weight"] = (HIDDEN, RANK)
    return shapes


@dataclass
class Timing:
    median_ms: float
    best_ms: float


def measure(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Median and best of ``repeats`` calls of each function, interleaved round-robin so that
    background load hits all of them alike (the best shows the cost without contention)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(statistics.median(t), min(t)) for name, t in times.items()}


def appfl_fedavg() -> Any | None:
    """APPFL's FedAvgAggregator with sample-size weights, or None when APPFL is missing."""
    try:
        from appfl.algorithm.aggregator import FedAvgAggregator
        from omegaconf import DictConfig
    except ImportError:
        return None
    return FedAvgAggregator(aggregator_configs=DictConfig({"client_weights_mode": "sample_size"}))


def main() -> None:
    console = Console()
    shapes = lora_shapes()
    numel = sum(a * b for a, b in shapes.values())
    gen = torch.Generator().manual_seed(0)
    samples = [100 + 37 * i for i in range(CLIENTS)]

    # one (clients, params) float32 buffer; each client's adapter dict is views into its row
    stacked = torch.randn(CLIENTS, numel, generator=gen)
    spec = FlatSpec.from_state({k: torch.empty(s) for k, s in shapes.items()})
    clients = [spec.unflatten(stacked[i]) for i in range(CLIENTS)]
    global_flat = stacked.mean(dim=0)

    flat_out = torch.empty(numel)
    ours = get_strategy("fedavg")
    updates = [Update(f"site{i}", stacked[i], samples[i], 0, 10) for i in range(CLIENTS)]
    ours_out = ours.aggregate(global_flat, updates, 0)
    timed = measure(
        {
            "ours": lambda: ours.aggregate(global_flat, updates, 0),
            "mean": lambda: torch.mean(stacked, dim=0),
            "flatten": lambda: spec.flatten(clients[0]),
            "flatten_out": lambda: spec.flatten(clients[0], out=flat_out),
        },
        REPEATS,
    )
    ours_t, mean_t, flatten_t = timed["ours"], timed["mean"], timed["flatten"]

    appfl_t: Timing | None = None
    ours_beside_appfl = ours_t
    max_diff: float | None = None
    agg = appfl_fedavg()
    if agg is not None:
        agg.global_state = spec.unflatten(global_flat, copy=True)
        local_models = {f"site{i}": clients[i] for i in range(CLIENTS)}
        for i in range(CLIENTS):
            agg.set_client_sample_size(f"site{i}", samples[i])
        # APPFL updates its global state in place; restart from the same one every repeat
        start_state = copy.deepcopy(agg.global_state)

        def run_appfl() -> dict[str, torch.Tensor]:
            agg.global_state = {k: v.clone() for k, v in start_state.items()}
            return agg.aggregate(local_models)

        max_diff = float((spec.flatten(run_appfl()) - ours_out).abs().max())
        pair = measure(
            {"appfl": run_appfl, "ours": lambda: ours.aggregate(global_flat, updates, 0)},
            APPFL_REPEATS,
        )
        appfl_t, ours_beside_appfl = pair["appfl"], pair["ours"]

    mb = numel * 4 / 1e6
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    title = (
        f"FedAvg of {CLIENTS} clients x LoRA r={RANK} on q,k,v,o of {LAYERS} "
        f"layers (hidden {HIDDEN}): {numel:,} params = {mb:.1f} MB fp32 each; "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus{load}"
    )
    rows: list[tuple[str, Timing | None, str, str]] = []
    if appfl_t is not None:
        speedup = appfl_t.median_ms / ours_beside_appfl.median_ms
        rows.append(
            (
                "APPFL 1.12 FedAvgAggregator (dict of tensors)",
                appfl_t,
                f"{speedup:.1f}x crossfl",
                _verdict(speedup >= 10, "crossfl >= 10x faster"),
            )
        )
    else:
        rows.append(("APPFL 1.12 FedAvgAggregator", None, "-", "skipped: not installed"))
    rows.append(("crossfl fedavg (flat buffers)", ours_t, "1.0x", ""))
    within = ours_t.median_ms / mean_t.median_ms
    rows.append(
        (
            f"torch.mean over one ({CLIENTS}, {numel}) buffer",
            mean_t,
            f"crossfl {within:.2f}x",
            _verdict(within <= 2, "crossfl within 2x"),
        )
    )
    rows.append(("FlatSpec.flatten, one client (new buffer)", flatten_t, "", ""))
    rows.append(("FlatSpec.flatten, one client (out= reused)", timed["flatten_out"], "", ""))
    table = results_table(title, rows)
    console.print(table)
    if appfl_t is None:
        console.print(
            "APPFL is optional: .venv/bin/pip install --no-deps -r requirements/appfl.txt",
            soft_wrap=True,
        )
    if max_diff is not None:
        console.print(
            f"APPFL's ratio uses crossfl timed alternately with it "
            f"({ours_beside_appfl.median_ms:.1f} ms median); "
            f"max |crossfl - APPFL| over the averaged adapter: {max_diff:.2e}"
        )


def results_table(title: str, rows: list[tuple[str, Timing | None, str, str]]) -> Table:
    """One row per operation: its median and best time, its ratio and the goal it meets.
    Fits 80 columns: the operation and goal wrap at spaces."""
    table = Table(title=title)
    table.add_column("operation")
    table.add_column("median ms", justify="right")
    table.add_column("best ms", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("goal")
    for name, timing, ratio, goal in rows:
        median = f"{timing.median_ms:.1f}" if timing else "-"
        best = f"{timing.best_ms:.1f}" if timing else "-"
        table.add_row(name, median, best, ratio, goal)
    return fit(table)


def _verdict(ok: bool, goal: str) -> str:
    return f"[green]met[/green]: {goal}" if ok else f"[red]missed[/red]: {goal}"


if __name__ == "__main__":
    main()
