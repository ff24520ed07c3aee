"""Run-directory records: one JSON line per client task and per round, flushed as they happen,
so a run that dies keeps everything it had already measured."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self.path.open("ab+") as fh:
            if fh.tell() > 0:  # a line a killed process cut short must not swallow this one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)


    def position(self) -> int:
        """Bytes written so far: what a checkpoint covers."""
        return self.path.stat().st_size if self.path.exists() else 0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of the file, including those a resumed run superseded."""
    return [rec for _pos, rec in _records_at(path)]


def _records_at(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.exists():
        return []
    records = []
    pos = 0
    for raw in path.read_bytes().splitlines(keepends=True):
        start, pos = pos, pos + len(raw)
        line = raw.strip()
        if line:
            try:
                records.append((start, json.loads(line)))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: keep the rest
    return records


def live_records(path: Path) -> list[dict[str, Any]]:
    """The records that count: where a run was resumed, what the killed process wrote after its
    last checkpoint (a round it never finished) is left out; the file itself keeps it."""
    entries = _records_at(path)
    live: list[tuple[int, dict[str, Any]]] = []
    for pos, rec in entries:
        if rec.get("kind") == "resume":
            cut = int(rec.get("metrics_bytes", pos))
            live = [(p, r) for p, r in live if p < cut]
        live.append((pos, rec))
    return [rec for _pos, rec in live]
