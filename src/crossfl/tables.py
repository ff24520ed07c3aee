"""Tables that read in 80 columns (rich): a name column that is never cut, headers that wrap
only between words, and, where a table still does not fit, its low-value columns left out of
the console (the caller keeps the whole table in the run's files)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

WIDTH = 80


def named_table(title: str, names: list[str], header: str = "site", **kwargs: object) -> Table:
    """A table whose first column holds ``names`` (sites, runs), whole: no wrap, no cut."""
    table = Table(title=title, **kwargs)  # type: ignore[arg-type]
    table.add_column(header, no_wrap=True, min_width=max((len(n) for n in names), default=4))
    return table


def min_width(table: Table) -> int:
    """The narrowest the table renders without cutting a word."""
    console = Console(file=io.StringIO(), width=10_000)
    return Measurement.get(console, console.options, table).minimum


def fit(table: Table, drop: tuple[str, ...] = (), width: int = WIDTH) -> Table:
    """``table`` made to read in ``width`` columns: every header wraps only at spaces; while it
    is still too wide, the columns named in ``drop`` leave it, in that order (in place)."""
    for column in table.columns:
        words = str(column.header).split() or [""]
        column.min_width = max(column.min_width or 0, *(len(w) for w in words))
    for header in drop:
        if min_width(table) <= width:
            break
        table.columns[:] = [c for c in table.columns if str(c.header) != header]
    return table
