"""What the stand-in commands (fake_apptainer, fake_podman) share: writing one into a
directory on PATH beside its registry and call log, and counting its calls."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def install_command(
    bindir: Path,
    name: str,
    script: str,
    registry: dict[str, dict[str, str]] | None,
    state: dict[str, str] | None = None,
) -> Path:
    """Write the stand-in `name` (its `script`, run by this Python) into `bindir`, with
    `registry` (labels per pullable reference), an empty call log and any `state` files
    (file name -> initial text)."""
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / name
    exe.write_text(script.format(python=sys.executable))
    exe.chmod(0o755)
    (bindir / "registry.json").write_text(json.dumps(registry or {}))
    for file, text in (state or {}).items():
        (bindir / file).write_text(text)
    (bindir / "calls.log").write_text("")
    return exe


def count_calls(bindir: Path, command: str) -> int:
    """How many times the stand-in in `bindir` ran `COMMAND`."""
    return sum(
        1
        for line in (bindir / "calls.log").read_text().splitlines()
        if line.split(" ", 1)[0] == command
    )
