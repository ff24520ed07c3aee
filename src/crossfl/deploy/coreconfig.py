"""crossfl's keys merged into an endpoint's `config.yaml` on the login node, keeping the rest.

The file belongs to whoever runs the endpoint: `globus-compute-endpoint configure` writes it,
and a facility admin may add identity mapping (`identity_mapping_config_path`), an
`authentication_policy`, `admins`, a `subscription_id`, `high_assurance`, or entries of their own
in `allowed_functions`. Deploy sets only the keys its rendered config.yaml holds (display name,
template paths, allowed functions, the site's policy and admins; `email` when given) and keeps
every other key, with its comments, where it was:

- a list (allowed_functions, admins): the site's entries, then every entry already there that
  deploy did not put there last time (`previous`: what it put then);
- authentication_policy: the site's, where it names one; else the one there (unless deploy
  put it there itself);
- any other key of the rendered file: the rendered value.

The merged text is checked by loading it back; where an unusual layout (flow style, anchors)
would not survive the line-based merge, the merged mapping is written plainly instead.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

LISTS = ("allowed_functions", "admins")
KEEP_IF_UNSET = ("authentication_policy",)
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)\s*:")
HEADER = "# crossfl deploy sets the keys below this line; other keys are kept as they are\n"


def merged_mapping(
    current: dict[str, Any], owned: dict[str, Any], previous: dict[str, Any]
) -> dict[str, Any]:
    out = dict(current)
    for key, value in owned.items():
        if key in LISTS:
            ours = [str(x) for x in value or []]
            theirs = [
                str(x)
                for x in current.get(key) or []
                if str(x) not in ours and str(x) not in previous.get(key, [])
            ]
            if ours or theirs:
                out[key] = ours + theirs
            else:
                out.pop(key, None)
        elif key in KEEP_IF_UNSET and value is None:
            if previous.get(key) is not None and current.get(key) == previous[key]:
                out.pop(key, None)  # deploy's own of last time, which the site dropped
            continue
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    for key in LISTS:  # deploy's entries of last time that it no longer sets go
        if key not in owned and key in out:
            out[key] = [x for x in out[key] if str(x) not in previous.get(key, [])]
            if not out[key]:
                out.pop(key)
    return out


def _blocks(text: str) -> list[tuple[str | None, str]]:
    """The top-level blocks of a YAML mapping as (key, text); comment and blank lines at the
    left margin belong to the key below them (None: text after the last key)."""
    blocks: list[tuple[str | None, str]] = []
    key: str | None = None
    lines: list[str] = []
    pending: list[str] = []
    for line in text.splitlines(keepends=True):
        m = _KEY.match(line)
        if m:
            if key is not None or lines:
                blocks.append((key, "".join(lines)))
            key, lines, pending = m.group(1), [*pending, line], []
        elif not line.strip() or line.startswith("#"):
            pending.append(line)
        else:
            lines += [*pending, line]
            pending = []
    if key is not None or lines:
        blocks.append((key, "".join(lines)))
    if pending:
        blocks.append((None, "".join(pending)))
    return blocks


def _dump(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=100)


def merge(current_text: str, owned: dict[str, Any], previous: dict[str, Any]) -> str:
    """The new config.yaml text. `current_text`: the file there ('' when there is none);
    `owned`: crossfl's keys (None: unset); `previous`: what deploy put there last time (the
    list entries, the policy)."""
    current = yaml.safe_load(current_text) if current_text.strip() else {}
    if not isinstance(current, dict):
        raise ValueError("config.yaml there is not a YAML mapping")
    want = merged_mapping(current, owned, previous)
    written: set[str] = set()
    parts: list[str] = []
    for key, text in _blocks(current_text):
        if key is None or (key in want and want[key] == current.get(key)):
            parts.append(text)  # as it was, comments included
            written.add(key or "")
        elif key in want:  # deploy's value changed: its own lines, the comments above kept
            comments = "".join(ln for ln in text.splitlines(keepends=True) if ln.startswith("#"))
            parts.append(comments + _dump(key, want[key]))
            written.add(key)
    missing = [k for k in want if k not in written and k not in current]
    if missing:
        body = "".join(parts)
        if body and not body.endswith("\n"):
            body += "\n"
        parts = [body, "" if HEADER in body else HEADER, *(_dump(k, want[k]) for k in missing)]
    text = "".join(parts)
    if (yaml.safe_load(text) or {}) != want:  # a layout the block merge cannot keep
        text = HEADER + yaml.safe_dump(want, sort_keys=False, default_flow_style=False, width=100)
    return text
