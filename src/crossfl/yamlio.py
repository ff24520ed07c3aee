"""Reading the kit's YAML files: a missing file or a syntax error is one `UserError` naming
the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crossfl.errors import UserError


def load_yaml(path: Path) -> Any:
    """The document in `path` (None for an empty file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError("file not found", file=path, fix="check the path") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(
            f"not valid YAML: {problem}",
            file=path,
            field=f"line {mark.line + 1}" if mark else None,
            fix="fix the YAML syntax",
        ) from None


def load_mapping(path: Path, *, fix: str | None = None) -> dict[str, Any]:
    """A YAML file of `field: value` pairs (an empty file is an empty mapping)."""
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("expected a mapping of fields at the top level", file=path, fix=fix)
    return data
