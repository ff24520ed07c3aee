"""SMolInstruct-format records: the schema, a loader for local JSONL files and an atomic writer.

A record is one instruction/answer pair, as in SMolInstruct (Yu et al., 2024):

    {"input": "What is the molecular formula of <SMILES> CCO </SMILES> ?",
     "output": "<MOLFORMULA> C2H6O </MOLFORMULA>",
     "raw_input": "CCO", "raw_output": "C2H6O",
     "task": "name_conversion-s2f", "split": "train"}

Real SMolInstruct exports carry more fields (`input_core_tag_left`, `target`, ...): they are
accepted and ignored. The loader reads one file or a directory of `*.jsonl` files (sorted by
name); every mistake in the input is a `UserError` naming the file, the line and the fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from crossfl.atomic import atomic_write_text, write_jsonl_files
from crossfl.errors import UserError
from crossfl.schema import problems

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
RECORD_FIELDS: tuple[str, ...] = ("input", "output", "raw_input", "raw_output", "task", "split")
BUILD_HINT = (
    "build the demo set with `crossfl data build-chem --out build/data/chem` (or `make data`)"
)

# An answer's tag: `<MOLFORMULA> C2H6O </MOLFORMULA>`; a generation may stop before closing it
_TAGGED = re.compile(r"<(?P<tag>[A-Z_]+)>(?P<body>.*?)(?:</(?P=tag)>|$)", re.DOTALL)


class Record(BaseModel):
    """One SMolInstruct instruction record (the six fields the kit uses)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    input: str
    output: str
    raw_input: str
    raw_output: str
    task: str
    split: Split

    @field_validator("raw_input", "raw_output", mode="before")
    @classmethod
    def _scalar_to_text(cls, value: object) -> object:
        """Real exports sometimes store numeric answers as numbers; keep them as text."""
        if isinstance(value, bool):
            return "Yes" if value else "No"
        if isinstance(value, int | float):
            return str(value)
        return value

    @field_validator("input", "output", "task")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def answer_of(text: str) -> str:
    """The one tagged-answer parser, for a record's output and a model's generation alike:
    the bare answer inside the first ``<TAG> ... </TAG>`` (closing tag optional), else the
    stripped text."""
    m = _TAGGED.search(text)
    return (m.group("body") if m else text).strip()


def jsonl_files(path: Path) -> list[Path]:
    """The JSONL files behind `path`: the file itself (a regular file or a named pipe), or a
    directory's `*.jsonl`, sorted."""
    if not path.exists():
        raise UserError("dataset path does not exist", file=path, fix=BUILD_HINT)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
    if not files:
        raise UserError(
            "directory holds no *.jsonl files",
            file=path,
            fix=f"point at a SMolInstruct JSONL file or directory; {BUILD_HINT}",
        )
    return files


def _field_problem(error: ValidationError) -> str:
    first = problems(error)[0]
    where = first.field or "record"
    if first.kind == "missing":
        return f"field '{where}' is missing"
    return f"field '{where}': {first.message}"


def _parse_line(path: Path, number: int, text: str) -> Record:
    field = f"line {number}"
    fix = "each line must be one JSON object with fields " + ", ".join(RECORD_FIELDS)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"not valid JSON ({exc.msg} at column {exc.colno})", file=path, field=field, fix=fix
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"expected a JSON object, found {type(data).__name__}", file=path, field=field, fix=fix
        ) from None
    try:
        return Record.model_validate(data)
    except ValidationError as exc:
        raise UserError(
            _field_problem(exc),
            file=path,
            field=field,
            fix=fix + "; split is one of " + ", ".join(SPLITS),
        ) from None


def iter_jsonl(path: Path) -> Iterator[Record]:
    """Records of one JSONL file, in order; blank lines are skipped."""
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _parse_line(path, number, line)
    except UnicodeDecodeError:
        raise UserError(
            "file is not UTF-8 text", file=path, fix="save the dataset as UTF-8 JSON Lines"
        ) from None
    except OSError as exc:
        raise UserError(
            f"cannot read file: {exc.strerror}", file=path, fix="check the path and its permissions"
        ) from None


def load_jsonl(
    path: Path,
    *,
    tasks: set[str] | None = None,
    limit: int | None = None,
    splits: set[str] | None = None,
) -> list[Record]:
    """Load SMolInstruct records from a JSONL file or a directory of them.

    `tasks` / `splits` keep only those task / split names; `limit` caps the total number of
    records returned (the first ones in file order). No matching record is a `UserError`.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}", field="limit")
    records: list[Record] = []
    seen_tasks: set[str] = set()
    for file in jsonl_files(path):
        for record in iter_jsonl(file):
            seen_tasks.add(record.task)
            if tasks is not None and record.task not in tasks:
                continue
            if splits is not None and record.split not in splits:
                continue
            records.append(record)
            if limit is not None and len(records) >= limit:
                return records
    if not records:
        raise UserError(_empty_message(tasks, splits), file=path, fix=_empty_fix(seen_tasks))
    return records


def _empty_message(tasks: set[str] | None, splits: set[str] | None) -> str:
    wanted = []
    if tasks is not None:
        wanted.append("tasks " + ", ".join(sorted(tasks)))
    if splits is not None:
        wanted.append("splits " + ", ".join(sorted(splits)))
    return "no records" + (" for " + " and ".join(wanted) if wanted else "")


def _empty_fix(seen_tasks: set[str]) -> str:
    if seen_tasks:
        return "tasks present: " + ", ".join(sorted(seen_tasks))
    return BUILD_HINT


def dumps_record(record: Record) -> str:
    """One JSONL line (no newline) with the six fields in their usual order."""
    return json.dumps(record.model_dump(), ensure_ascii=False)


def write_jsonl(records: Iterable[Record], path: Path) -> Path:
    """Write records to `path` atomically: a temp file in the same directory, then os.replace."""
    path = Path(path)
    write_jsonl_set({path: records})
    return path


def write_jsonl_set(files: dict[Path, Iterable[Record]]) -> list[Path]:
    """Write several JSONL files as one step (``crossfl.atomic.write_jsonl_files``): all are
    staged first and moved into place only once every one is written; if any write fails,
    the existing files stay as they were."""
    return write_jsonl_files(
        {target: (dumps_record(r) for r in records) for target, records in files.items()},
        mode=0o644,
    )


def write_json(data: object, path: Path) -> Path:
    """A small JSON file (a manifest), written atomically."""
    return atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")
