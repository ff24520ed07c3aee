"""Run-directory records: one JSON line per client task and per round, flushed as they happen,
so a run that dies keeps everything it had already measured. The record kinds are the models
of ``crossfl.server.records``; this module is their one writer and their reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from crossfl.atomic import append_jsonl
from crossfl.server.records import RECORD, AnyRecord, MetricsRecord, ResumeRecord


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: MetricsRecord) -> None:
        append_jsonl(self.path, record.model_dump_json(exclude_none=True))

    def position(self) -> int:
        """Bytes written so far: what a checkpoint covers."""
        return self.path.stat().st_size if self.path.exists() else 0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every line of the file as plain data, including what a resumed run superseded."""
    return [rec for _pos, rec in _lines_at(path)]


def _lines_at(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.exists():
        return []
    lines = []
    pos = 0
    for raw in path.read_bytes().splitlines(keepends=True):
        start, pos = pos, pos + len(raw)
        line = raw.strip()
        if line:
            try:
                lines.append((start, json.loads(line)))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: keep the rest
    return lines


def live_records(path: Path) -> list[AnyRecord]:
    """The records that count, as their models: where a run was resumed, what the killed
    process wrote after its last checkpoint (a round it never finished) is left out; the file
    itself keeps it. A line that is no record (cut short, or of no known kind) is passed over."""
    live: list[tuple[int, AnyRecord]] = []
    for pos, raw in _lines_at(path):
        try:
            rec = RECORD.validate_python(raw)
        except ValidationError:
            continue
        if isinstance(rec, ResumeRecord):
            live = [(p, r) for p, r in live if p < rec.metrics_bytes]
        live.append((pos, rec))
    return [rec for _pos, rec in live]


R = TypeVar("R", bound=MetricsRecord)


def of_kind(records: list[AnyRecord], cls: type[R]) -> list[R]:
    """The records of one model (e.g. ``TaskRecord``), in order."""
    return [r for r in records if isinstance(r, cls)]
