"""Checkpoints: everything a killed run needs to go on where it stopped.

Written after every aggregation into ``<run>/checkpoint/round-NNNNN/`` (one generation per
round, or aggregation for the asynchronous driver), the whole directory at once
(``atomic.new_dir``: filled beside, fsynced, renamed into place):
- ``state.pt``: torch.save of the global flat adapter and its layout, the strategy's state_dict,
  RNG states, round/version/update counters, parked sites, the screening history and the
  position in metrics.jsonl (bytes) that the checkpoint covers;
- ``global_adapter.safetensors``: the global adapter (float32), readable without crossfl;
- ``state.json``: the counters in plain text; ``finished: true`` once the run completed.

Then ``<run>/checkpoint/state.json`` (the same counters, plus the generation's name) is
replaced: that is the commit, and what ``load`` continues from. The ``keep`` newest
generations stay (default 3); ``load(..., round=N)`` reads an older one (`crossfl resume RUN
--from-round N`). A write that fails (a full disk) leaves the previous generation and the
pointer as they were.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from crossfl.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, new_dir
from crossfl.errors import UserError
from crossfl.server.flat import FlatSpec

FORMAT = 1
KEEP = 3  # generations kept by default (experiment field `keep_checkpoints`)
POINTER = "state.json"
_GENERATION = re.compile(r"round-(\d{5,})")


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


def generation_name(rnd: int) -> str:
    return f"round-{rnd:05d}"


def generations(ckpt_dir: Path) -> dict[int, Path]:
    """The complete generations in ``ckpt_dir``, by round (oldest first)."""
    found = {}
    for entry in ckpt_dir.glob("round-*"):
        m = _GENERATION.fullmatch(entry.name)
        if m and (entry / "state.pt").is_file() and (entry / POINTER).is_file():
            found[int(m[1])] = entry
    return dict(sorted(found.items()))


def save(ckpt_dir: Path, c: Checkpoint, adapter_bytes: bytes | None, keep: int = KEEP) -> Path:
    """Write generation ``c.round``, make it the one to continue from, and drop the
    generations beyond the ``keep`` newest; its directory."""
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
    meta = {
        "round": c.round,
        "version": c.version,
        "updates": c.updates,
        "elapsed_s": c.elapsed_s,
        "strategy": c.strategy_name,
        "finished": c.finished,
    }
    gen = ckpt_dir / generation_name(c.round)
    with new_dir(gen) as tmp:
        atomic_write_bytes(tmp / "state.pt", buf.getvalue())
        if adapter_bytes is not None:
            atomic_write_bytes(tmp / "global_adapter.safetensors", adapter_bytes)
        atomic_write_text(tmp / POINTER, json.dumps(meta, indent=2))
    commit(ckpt_dir, gen.name, meta)
    for old in list(generations(ckpt_dir).values())[:-keep]:
        if old != gen:
            shutil.rmtree(old, ignore_errors=True)
    return gen


def commit(ckpt_dir: Path, generation: str, meta: dict[str, Any] | None = None) -> None:
    """Point ``ckpt_dir/state.json`` at ``generation``: the one a resume continues from."""
    if meta is None:
        meta = json.loads((ckpt_dir / generation / POINTER).read_text())
    atomic_write_text(ckpt_dir / POINTER, json.dumps({**meta, "generation": generation}, indent=2))


def rewind(ckpt_dir: Path, rnd: int, aside: list[Path]) -> Path | None:
    """Continue from generation ``rnd``: the later generations, and ``aside`` (e.g. the final
    adapter of the run being redone), move into ``ckpt_dir/superseded-<time>/``, where nothing
    removes them; that directory, or None when there was nothing to move."""
    kept = generations(ckpt_dir)
    if rnd not in kept:
        rounds = ", ".join(map(str, kept)) or "none"
        raise UserError(
            f"no checkpoint of round {rnd} is kept (kept: {rounds})",
            file=ckpt_dir,
            field="--from-round",
            fix="give one of the kept rounds",
        )
    later = [p for r, p in kept.items() if r > rnd] + [p for p in aside if p.exists()]
    moved = None
    if later:
        moved = ckpt_dir / f"superseded-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S-%f')}"
        moved.mkdir()
        for p in later:
            p.rename(moved / p.name)
        fsync_dir(ckpt_dir)
    commit(ckpt_dir, kept[rnd].name)
    return moved


def current(ckpt_dir: Path) -> Path | None:
    """The generation a resume continues from: the one ``state.json`` names; failing that
    (a run of an earlier crossfl, or a pointer lost) the newest complete one, or the files
    directly in ``ckpt_dir`` as earlier crossfl versions wrote them."""
    name = (load_meta(ckpt_dir) or {}).get("generation")
    if isinstance(name, str) and _GENERATION.fullmatch(name) and (ckpt_dir / name).is_dir():
        return ckpt_dir / name
    kept = generations(ckpt_dir)
    if kept:
        return list(kept.values())[-1]
    return ckpt_dir if (ckpt_dir / "state.pt").is_file() else None


def load(ckpt_dir: Path, rnd: int | None = None) -> Checkpoint | None:
    """The checkpoint to continue from in ``ckpt_dir`` (``rnd``: that round's generation), or
    None when the run never aggregated."""
    where = current(ckpt_dir) if rnd is None else generations(ckpt_dir).get(rnd)
    if where is None:
        return None
    path = where / "state.pt"
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
