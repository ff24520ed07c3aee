"""How a value becomes a shell word: `quote`, the one way (templates use it as the `sq`
filter; the site schema, deploy, doctor and the renderer call it). Imports nothing of the kit,
so any package may use it."""

from __future__ import annotations

import re
import shlex

_NAME_REF = r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_LEADING_REF = re.compile(rf"^{_NAME_REF}")
# Characters that mean nothing to a shell inside double quotes, and $NAME / ${NAME}
_EXPANDABLE = re.compile(rf"(?:[A-Za-z0-9_.,:@%+=~/<>-]|{_NAME_REF})*")


def quote(word: str) -> str:
    """The one way a value becomes a shell word (templates use it as the `sq` filter; deploy,
    doctor and the renderer call it). shlex.quote, except that `$NAME` references in a path
    stay expandable where the word runs (the image under $HOME, `$USER`'s directory of a
    project filesystem): a word of path characters and `$NAME`s only is double-quoted, and a
    leading `~/` becomes `$HOME/`. Anything else a shell would read (quotes, `$(...)`,
    backticks, `;`, spaces) stays inert inside single quotes."""
    if word == "~" or word.startswith("~/"):
        word = "$HOME" + word[1:]
    if "$" not in word:
        return shlex.quote(word)
    if _EXPANDABLE.fullmatch(word):
        return f'"{word}"'
    lead = _LEADING_REF.match(word)
    if lead:  # e.g. "$HOME/a b": the home expands, the rest is literal
        rest = word[lead.end() :]
        return f'"{lead.group()}"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(word)
