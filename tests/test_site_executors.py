"""A live site's scheduler control (crossfl.server.site_executors.SchedulerControl), with the
scheduler's answers recorded: how a kept estimate is read between two questions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from crossfl import sites
from crossfl.server.site_executors import PILOT_NAMES, SchedulerControl


def test_a_kept_estimate_counts_down_to_the_time_the_scheduler_named() -> None:
    """The scheduler names a start time; asked again only after `every_s`, the control's
    answer in between is the time left until then, not the seconds it first computed."""
    start = (datetime.now(UTC) + timedelta(seconds=1000)).replace(tzinfo=None)
    asked: list[str] = []

    def run(line: str) -> tuple[str, int]:  # squeue --start, as the login node answers
        asked.append(line)
        return f"CROSSFL_USER=me\nme {start:%Y-%m-%dT%H:%M:%S} {PILOT_NAMES[False]}0.1\n", 0

    plan = SimpleNamespace(
        name="frontier",
        catalog=sites.load_site("frontier"),
        user_options={},
        held_nodes=1,
        mpi=False,
    )
    now = [5000.0]
    control = SchedulerControl(  # type: ignore[arg-type]
        plan, run=run, every_s=3600.0, clock=lambda: now[0]
    )
    first = control.start_estimate_s()
    assert first is not None and 900 < first <= 1000 and len(asked) == 1
    now[0] += 400.0  # not asked again: 400 s nearer the named start
    assert control.start_estimate_s() == pytest.approx(first - 400.0) and len(asked) == 1
    now[0] += 700.0  # past the named start: due now
    assert control.start_estimate_s() == 0.0 and len(asked) == 1
    now[0] += 2500.0  # every_s after the question: asked again
    control.start_estimate_s()
    assert len(asked) == 2
