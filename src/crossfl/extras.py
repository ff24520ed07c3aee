"""The optional parts of the install (pyproject.toml's extras), checked where a command needs
one, so a missing package is one line naming the extra rather than an ImportError later (in a
site's worker, for a local site)."""

from __future__ import annotations

from importlib.util import find_spec

from crossfl.errors import UserError

EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("transformers", "peft", "tokenizers"),
    "data": ("rdkit",),
    "sim": ("scipy",),
}


def require(extra: str, what: str) -> None:
    """UserError unless every module of ``extra`` is installed (found, not imported)."""
    missing = [name for name in EXTRAS[extra] if find_spec(name) is None]
    if missing:
        raise UserError(
            f"{what} needs {', '.join(missing)}, not installed here",
            fix=f"`make setup` installs every extra; or pip install -e '.[{extra}]' "
            "-c requirements/constraints.txt",
        )
