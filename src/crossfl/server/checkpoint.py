"""Checkpoints: everything a killed run needs to go on where it stopped.

Written after every aggregation into ``<run>/checkpoint/``, each file atomically:
- ``state.pt``: torch.save of the global flat adapter and its layout, the strategy's state_dict,
  RNG states, round/version/update counters, parked sites, the screening history and the
  position in metrics.jsonl (bytes) that the checkpoint covers;
- ``global_adapter.safetensors``: the global adapter (float32), readable without crossfl;
- ``state.json``: the counters in plain text; ``finished: true`` once the run completed.
``state.pt`` is written before ``state.json``, so state.json never names a round that
state.pt does not hold.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from crossfl.atomic import atomic_write_bytes, atomic_write_text
from crossfl.errors import UserError
from crossfl.server.flat import FlatSpec

FORMAT = 1


@dataclass
class Checkpoint:
    round: int
    version: int
    updates: int
    elapsed_s: float
    metrics_bytes: int
    strategy_name: str
    strategy_state: dict[str, Any]
    global_flat: torch.Tensor | None = None
    spec: FlatSpec | None = None
    parking: dict[str, Any] = field(default_factory=dict)
    screen_history: list[float] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))


def _spec_to_plain(spec: FlatSpec) -> dict[str, Any]:
    return {
        "keys": list(spec.keys),
        "shapes": [list(s) for s in spec.shapes],
        "dtypes": [str(d).removeprefix("torch.") for d in spec.dtypes],
    }


def _spec_from_plain(plain: dict[str, Any]) -> FlatSpec:
    state = {
        k: torch.empty(shape, dtype=getattr(torch, dt))
        for k, shape, dt in zip(plain["keys"], plain["shapes"], plain["dtypes"], strict=False)
    }
    return FlatSpec.from_state(state)


def save(ckpt_dir: Path, c: Checkpoint, adapter_bytes: bytes | None) -> None:
    payload = {
        "format": FORMAT,
        "round": c.round,
        "version": c.version,
        "updates": c.updates,
        "elapsed_s": c.elapsed_s,
        "metrics_bytes": c.metrics_bytes,
        "strategy_name": c.strategy_name,
        "strategy_state": c.strategy_state,
        "global_flat": c.global_flat,
        "spec": _spec_to_plain(c.spec) if c.spec is not None else None,
        "parking": c.parking,
        "screen_history": list(c.screen_history),
        "rng": c.rng,
        "finished": c.finished,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(ckpt_dir / "state.pt", buf.getvalue())
    if adapter_bytes is not None:
        atomic_write_bytes(ckpt_dir / "global_adapter.safetensors", adapter_bytes)
    meta = {
        "round": c.round,
        "version": c.version,
        "updates": c.updates,
        "elapsed_s": c.elapsed_s,
        "strategy": c.strategy_name,
        "finished": c.finished,
    }
    atomic_write_text(ckpt_dir / "state.json", json.dumps(meta, indent=2))


def load(ckpt_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``ckpt_dir``, or None when the run never aggregated."""
    path = ckpt_dir / "state.pt"
    if not path.is_file():
        return None
    try:
        raw = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    except Exception as exc:
        raise UserError(
            f"checkpoint {path} cannot be read: {exc}",
            file=path,
            fix="it is left as it is; start a new run with `crossfl run`",
        ) from None
    if raw.get("format") != FORMAT:
        raise UserError(
            f"checkpoint format {raw.get('format')!r} is not {FORMAT}",
            file=path,
            fix="resume it with the crossfl version that wrote it",
        )
    return Checkpoint(
        round=int(raw["round"]),
        version=int(raw["version"]),
        updates=int(raw["updates"]),
        elapsed_s=float(raw["elapsed_s"]),
        metrics_bytes=int(raw["metrics_bytes"]),
        strategy_name=str(raw["strategy_name"]),
        strategy_state=raw["strategy_state"],
        global_flat=raw["global_flat"],
        spec=_spec_from_plain(raw["spec"]) if raw["spec"] else None,
        parking=raw.get("parking") or {},
        screen_history=list(raw.get("screen_history") or []),
        rng=raw.get("rng") or {},
        finished=bool(raw.get("finished")),
    )


def load_meta(ckpt_dir: Path) -> dict[str, Any] | None:
    """The counters of ``state.json`` (round, version, updates, finished), or None."""
    try:
        meta = json.loads((ckpt_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_finished(ckpt_dir: Path) -> bool:
    return bool((load_meta(ckpt_dir) or {}).get("finished"))
