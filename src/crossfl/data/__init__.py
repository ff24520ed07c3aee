"""Datasets in SMolInstruct JSONL format: the built-in RDKit chemistry set, a loader for
local SMolInstruct files, and partitioners that split a training set across sites.

The RDKit builder (`crossfl.data.chem`) is imported lazily, so code that only loads or
partitions records (the client in a facility image) does not pay for importing RDKit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crossfl.data.partition import SCHEMES, Scheme, partition, task_counts, write_partitions
from crossfl.data.smolinstruct import Record, answer_of, load_jsonl, write_jsonl

if TYPE_CHECKING:
    from crossfl.data.chem import TASKS, BuildSummary, build_chem

_LAZY = {"TASKS", "BuildSummary", "build_chem"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from crossfl.data import chem

        return getattr(chem, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMES",
    "TASKS",
    "BuildSummary",
    "Record",
    "Scheme",
    "build_chem",
    "answer_of",
    "load_jsonl",
    "partition",
    "task_counts",
    "write_jsonl",
    "write_partitions",
]
