"""How a value becomes a shell word: `quote`, the one way (templates use it as the `sq`
filter; the site schema, deploy, doctor and the renderer call it), and `home_path`, the one
`~`-to-`$HOME` rewrite of a remote path. Imports nothing of the kit, so any package may use
it."""

from __future__ import annotations

import re
import shlex

_NAME_REF = r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})"
_LEADING_REF = re.compile(rf"^{_NAME_REF}")
# Characters that mean nothing to a shell inside double quotes, and $NAME / ${NAME}
_EXPANDABLE = re.compile(rf"(?:[A-Za-z0-9_.,:@%+=~/<>-]|{_NAME_REF})*")


def home_path(path: str) -> str:
    """The one `~`-to-`$HOME` rewrite of a remote path: a leading `~` or `~/` becomes
    `$HOME`, which the login node's or the job's shell expands (inside double quotes too,
    where `~` would not); any other path is returned unchanged."""
    if path == "~" or path.startswith("~/"):
        return "$HOME" + path[1:]
    return path


def quote(word: str) -> str:
    """The one way a value becomes a shell word (templates use it as the `sq` filter; deploy,
    doctor and the renderer call it). shlex.quote, except that `$NAME` references in a path
    stay expandable where the word runs (the image under $HOME, `$USER`'s directory of a
    project filesystem): a word of path characters and `$NAME`s only is double-quoted, and a
    leading `~/` becomes `$HOME/`. Anything else a shell would read (quotes, `$(...)`,
    backticks, `;`, spaces) stays inert inside single quotes."""
    word = home_path(word)
    if "$" not in word:
        return shlex.quote(word)
    if _EXPANDABLE.fullmatch(word):
        return f'"{word}"'
    lead = _LEADING_REF.match(word)
    if lead:  # e.g. "$HOME/a b": the home expands, the rest is literal
        rest = word[lead.end() :]
        return f'"{lead.group()}"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(word)
