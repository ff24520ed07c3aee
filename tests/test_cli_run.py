"""crossfl.cli.run: resume and report of a missing run are one line, no traceback."""

from __future__ import annotations

from pathlib import Path


def test_cli_resume_and_report_of_a_missing_run_are_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, CROSSFL_ROOT=str(tmp_path))
    for args in (["resume", "no-such-run"], ["report", "no-such-run", "other"]):
        proc = subprocess.run(
            [sys.executable, "-m", "crossfl", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout and "no run directory" in proc.stderr
