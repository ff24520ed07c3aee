"""crossfl.server.telemetry: resumed metrics leave out the unfinished round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossfl.server.records import AggregationRecord, ResumeRecord, TaskRecord
from crossfl.server.telemetry import MetricsLog, live_records


def task_record(rnd: int, site: str, **changes: Any) -> TaskRecord:
    return TaskRecord(
        round=rnd,
        site=site,
        status="ok",
        submitted_at=1.0,
        received_at=2.0,
        submitted_rel_s=0.5,
        bytes_down=0,
        transport="inline",
        attempts=1,
        base_version=0,
        local_steps=1,
        **changes,
    )


def test_resumed_metrics_leave_out_the_unfinished_round(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.write(task_record(1, "a", train_loss=0.5))
    log.write(
        AggregationRecord(
            round=1, version=1, driver="sync", sites=["a"], elapsed_s=1.0, staleness={"a": 0}
        )
    )
    position = log.position()
    log.write(task_record(2, "killed"))
    with path.open("a") as fh:
        fh.write('{"kind": "task", "rou')  # a line a killed process cut short
    log.write(ResumeRecord(round=1, version=1, metrics_bytes=position, at=3.0, elapsed_s=1.0))
    log.write(task_record(2, "again"))
    live = live_records(path)
    assert [r.site for r in live if isinstance(r, TaskRecord)] == ["a", "again"]
    assert live[0] == task_record(1, "a", train_loss=0.5)  # the record reads back as written
    assert (
        "killed" in path.read_text() and '"error"' not in path.read_text()
    )  # unset fields stay out
