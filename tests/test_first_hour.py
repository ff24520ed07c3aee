"""What a new user meets in the first hour (issue 19): the install's extras, commands run from
any directory of the project, overrides and ${VAR}s that are checked, copyable hints, and
output that fits 80 columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossfl.cli import build_app
from crossfl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> tuple[int, str]:
    """Run `crossfl ARGS` in this process; its exit status and what it printed (a UserError as
    the one line `crossfl` itself prints)."""
    result = CliRunner().invoke(build_app(), list(args))
    if isinstance(result.exception, UserError):
        return 2, result.output + result.exception.render()
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# ------------------------------------------------------------------ extras


def test_a_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import crossfl.extras

    real = crossfl.extras.find_spec
    monkeypatch.setattr(
        crossfl.extras, "find_spec", lambda name: None if name == "rdkit" else real(name)
    )
    code, out = cli("data", "build-chem", "--out", "build/nowhere")
    assert code == 2 and "crossfl data build-chem needs rdkit" in out
    assert "'.[data]'" in out and not (ROOT / "build" / "nowhere").exists()
    crossfl.extras.require("train", "x")  # installed here: no error
    monkeypatch.setattr(crossfl.extras, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"transformers, peft, tokenizers.*\.\[train\]"):
        crossfl.extras.require("train", "site east trains on this machine and")
