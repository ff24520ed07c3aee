"""The kinds of site value that reach a shell, a batch header or a Parsl provider, each checked
when the site loads (the schema's field types), then quoted where it is used
(`crossfl.quoting.quote`). A value that fails is one line naming the field and the fix.

Every kind refuses control characters (a newline in `account` would add a `#PBS` line, or a
command after a `#SBATCH` line). Then, by kind:

  Line     shell text by design (worker_init, python_activate, directives): one line
  Token    account, queue, QOS: letters, digits and `_.@+-` (Parsl passes them to qsub
           through a shell, and writes them into #SBATCH lines)
  Path     paths and image names: path characters, `$NAME` (expanded where it runs), the
           catalog's `{{remote_root}}`-style placeholders
  Module   module names (`module load rocm/6.2.4`)
  Option   one option word of a command (`--fakeroot`)
  Options  options text split on spaces (launcher.options)
  Word     a scheduler value written into a batch header only (constraint, select options)
  Url      a URL or host list (proxies, docs): no quotes, `$`, backticks or spaces
  Ident    an environment variable's name
  Uuid     a Globus identifier (policy, identity, function)

An unset `${VAR:?hint}` loads as `<VAR>` (crossfl.sites.loading) and passes every kind, so a
site still renders for a dry run; whatever needs the value stops first (Site.require_set).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
UNSET = r"<[A-Za-z_][A-Za-z0-9_]*>"
_PLACEHOLDER = r"\{\{(?:remote_root|site|project_root)\}\}"
_VAR = r"\$[A-Za-z_][A-Za-z0-9_]*"


def _kind(what: str, pattern: str, allowed: str):
    rule = re.compile(rf"^(?:{pattern}|{UNSET})$")

    def check(value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError(
                f"{value!r} holds a newline or control character: write the value on one "
                "line, without control characters"
            )
        if not rule.match(value):
            raise ValueError(f"{value!r} is not a valid {what}: use {allowed}")
        return value

    return AfterValidator(check)


Line = Annotated[str, _kind("line", r".*", "one line")]
TOKEN = r"[A-Za-z0-9_][A-Za-z0-9_.@+-]*"  # also the endpoint schema's rule (render.options)
Token = Annotated[
    str,
    _kind(
        "name",
        TOKEN,
        "letters, digits and the characters _.@+- (not first)",
    ),
]
Path = Annotated[
    str,
    _kind(
        "path",
        rf"(?:[A-Za-z0-9_.,:@%+=~/-]|{_VAR}|{_PLACEHOLDER}|{UNSET})+",
        "a path of letters, digits and the characters _.,:@%+=~/- with $NAME for "
        "the environment where it runs (no spaces, quotes or other shell characters)",
    ),
]
Module = Annotated[
    str,
    _kind("module name", r"[A-Za-z0-9_.+/@:=-]+", "letters, digits and the characters _.+/@:=-"),
]
Option = Annotated[
    str,
    _kind(
        "option",
        r"[A-Za-z0-9_.,:=@%+/-]+",
        "one word of letters, digits and the characters _.,:=@%+/-",
    ),
]
Options = Annotated[
    str,
    _kind(
        "option list",
        r"[A-Za-z0-9_.,:=@%+/ -]*",
        "words of letters, digits and the characters _.,:=@%+/- separated by spaces",
    ),
]
Word = Annotated[
    str,
    _kind(
        "scheduler value",
        r"[A-Za-z0-9_.,:=@%+/&|*!\[\]-]+",
        "one word of letters, digits and the characters _.,:=@%+/&|*![]-",
    ),
]
Url = Annotated[
    str,
    _kind(
        "URL or host list",
        r"[A-Za-z0-9_.,:/?#@=+%~*-]+",
        "a URL or comma-separated hosts, without spaces, quotes, $ or backticks",
    ),
]
Uuid = Annotated[
    str,
    _kind(
        "UUID",
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        "a UUID as Globus shows it (8-4-4-4-12 hex digits)",
    ),
]
Ident = Annotated[
    str,
    _kind("variable name", r"[A-Za-z_][A-Za-z0-9_]*", "letters, digits and _ (not a digit first)"),
]
