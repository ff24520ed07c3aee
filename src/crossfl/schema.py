"""pydantic the kit's way: models that refuse unknown fields, and validation errors turned
into one `UserError` naming the file, the field and the fix.

Imports only pydantic and crossfl.errors, so the client package may use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from crossfl.errors import UserError


class StrictModel(BaseModel):
    """A schema whose unknown fields are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid")


class FieldError(ValueError):
    """Raised by a model-level check that belongs to one field: reported under that field's
    name (dotted, e.g. "container.images.cuda" or "directives[1]") instead of the model's."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def field_path(loc: Sequence[Any], raw: Any = None) -> str:
    """A pydantic location as the user writes it: ("a", 0, "b") -> "a[0].b". Given the raw
    document, a list item with a ``name`` is named by it ("sites[alpha].b"), and a level the
    document does not have (the member pydantic chose of a tagged union) is left out."""
    out = ""
    node = raw
    for i, part in enumerate(loc):
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            out += f"[{name if name is not None else part}]"
            node = item
        elif str(part).startswith("function-"):  # validator wrappers, not fields
            continue
        elif isinstance(node, dict) and part not in node and i < len(loc) - 1:
            continue  # a union member's tag, not a level of the file
        else:
            out += ("." if out else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


@dataclass(frozen=True)
class Problem:
    """One pydantic error, worded for the user. `fix` is None where only a generic hint
    (the caller's) would help."""

    field: str
    message: str
    fix: str | None
    kind: str
    input: Any = None


def problems(exc: ValidationError, *, schema: str = "the schema", raw: Any = None) -> list[Problem]:
    """Each error of `exc` as (field, message, fix). A ValueError raised as "what: fix" is
    split there; a FieldError moves to its own field. `schema` names where the fields are
    documented (for unknown fields); `raw`, the document validated, names list items."""
    out = []
    for e in exc.errors():
        field = field_path(e["loc"], raw)
        msg = e["msg"].removeprefix("Value error, ")
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, FieldError):
            field, msg = ctx_err.field, str(ctx_err)
        kind, fix = e["type"], None
        if kind == "extra_forbidden":
            msg, fix = "unknown field", f"remove it, or check its spelling against {schema}"
        elif kind == "missing":
            msg, fix = "required field is missing", f"add {field}"
        elif kind == "literal_error":
            msg, fix = (
                f"{e.get('input')!r} is not allowed",
                "use " + msg.removeprefix("Input should be "),
            )
        elif kind == "value_error" and ": " in msg:
            msg, _, fix = msg.rpartition(": ")
        elif kind == "union_tag_invalid":
            ctx = e.get("ctx") or {}
            key = str(ctx.get("discriminator", "")).strip("'")
            tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
            msg = f"unknown {key} {ctx.get('tag')!r}"
            fix = f"use {key}: " + (
                ", ".join(tags[:-1]) + " or " + tags[-1] if len(tags) > 1 else tags[0]
            )
        out.append(Problem(field, msg, fix, kind, e.get("input")))
    return out


def short_repr(value: Any, limit: int = 100) -> str:
    """``repr(value)`` in at most ``limit`` characters, its middle cut (a value may be a site's
    megabytes; a path's end says the most)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return text[:half] + "..." + text[len(text) - half :]


def user_error(
    exc: ValidationError,
    *,
    file: str | Path | None = None,
    field_prefix: str = "",
    schema: str = "the schema",
    what: str | None = None,
    fix: str | None = None,
    raw: Any = None,
) -> UserError:
    """The first problem of `exc` as one UserError (the others are counted). `field_prefix`
    places the model inside a larger document (e.g. "strategy.kwargs"); `what` says what the
    whole is, e.g. "deploy state is unreadable" -> "deploy state is unreadable (<problem>)".
    A `fix` given here wins over the problem's own; `raw` is the document validated (its list
    items are then named by their ``name``)."""
    first = problems(exc, schema=schema, raw=raw)[0]
    more = exc.error_count() - 1
    field = ".".join(p for p in (field_prefix, first.field) if p) or "(top level)"
    message = first.message + (f" (and {more} more)" if more else "")
    if what:
        message = f"{what} ({message})"
    got = "" if isinstance(first.input, dict | list) else f"got {short_repr(first.input)}; "
    return UserError(
        message, file=file, field=field, fix=fix or first.fix or f"{got}correct the value"
    )
