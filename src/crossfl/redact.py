"""Secrets stay out of what the kit prints, records and writes world-readable.

A secret is the value of a variable whose name says so (GLOBUS_COMPUTE_CLIENT_SECRET, any
*_SECRET, *_TOKEN, *PASSWORD*, *_KEY of an API or access key, ...): assigned in a shell line
(`export NAME=value`, e.g. in deploy.python_activate) or set in this process's environment (a
`${VAR}` in a site file brings it into a site value). `redact` replaces each with `***`; a
UserError is redacted when it is made (crossfl.errors), deploy's output and dry run when they
are printed. `carries_secret` tells the renderer which files to write 0600.

Imports only the standard library, so every package (the client's included) may use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

MASK = "***"
# Upper-case names only (an environment variable's), so `max_new_tokens=4` stays as it is.
_SECRET_NAME = re.compile(
    r"SECRET|TOKEN|PASSW(?:OR)?D|PASSPHRASE|CREDENTIAL|PRIVATE_?KEY|API_?KEY|ACCESS_?KEY"
)
# NAME=value in a shell line: the value up to the next unquoted space or ; & |
_ASSIGN = re.compile(
    r"(?P<name>\b[A-Za-z_][A-Za-z0-9_]*)=(?P<value>'[^']*'|\"(?:[^\"\\]|\\.)*\"|[^\s;&|'\"]+)"
)
_MIN_LEN = 8  # shorter environment values ("true", "/tmp") are too common to mask everywhere


def secret_name(name: str) -> bool:
    return name == name.upper() and bool(_SECRET_NAME.search(name))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of this environment's secret-named variables, longest first."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if secret_name(k) and len(v) >= _MIN_LEN}
    return sorted(found, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret-named assignment's value and every secret of the environment
    replaced by ***."""

    def mask(m: re.Match[str]) -> str:
        return f"{m.group('name')}={MASK}" if secret_name(m.group("name")) else m.group()

    out = _ASSIGN.sub(mask, text)
    for value in secret_values(environ):
        out = out.replace(value, MASK)
    return out


def carries_secret(text: str, environ: Mapping[str, str] | None = None) -> bool:
    return redact(text, environ) != text
