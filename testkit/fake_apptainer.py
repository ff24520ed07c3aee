"""A stand-in `apptainer` for the test "login node" (no Apptainer on these machines), written
into a directory that the test sshd's login shells put first on PATH:

  apptainer --version                   `apptainer version 1.3.6-fake`
  apptainer build [opts] OUT DEF        OUT holds DEF's %labels (parsed as Apptainer reads
                                        them: `key value` lines) and DEF's sha256, as JSON
  apptainer pull [opts] OUT REF         OUT holds the labels registered for REF in
                                        registry.json beside this script; an unknown REF fails
                                        as a missing manifest does
  apptainer inspect --labels [--json] IMG   those labels, in apptainer's JSON layout

Every call is appended to calls.log beside it, so a test can count builds and pulls; a file
`fail-COMMAND` beside it makes that command fail with the file's text.
"""

from __future__ import annotations

from pathlib import Path

from testkit.fake_command import count_calls, install_command

SCRIPT = """#!{python}
import hashlib, json, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(HERE / "calls.log", "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:1] in (["--version"], ["version"]):
    print("apptainer version 1.3.6-fake")
    sys.exit(0)
cmd, rest = args[0], [a for a in args[1:] if not a.startswith("-")]
if (HERE / ("fail-" + cmd)).exists():
    sys.exit((HERE / ("fail-" + cmd)).read_text())
if cmd == "build":
    out, definition = rest[0], rest[1]
    text = Path(definition).read_text()
    labels, section = {{}}, None
    for line in text.splitlines():
        if line.startswith("%"):
            section = line.split()[0]
        elif section == "%labels" and line.strip():
            key, _, value = line.strip().partition(" ")
            labels[key] = value.strip()
    Path(out).write_text(json.dumps({{"labels": labels,
                                     "def": hashlib.sha256(text.encode()).hexdigest()}}))
elif cmd == "pull":
    out, ref = rest[0], rest[1]
    known = json.loads((HERE / "registry.json").read_text())
    if ref not in known:
        sys.exit("FATAL:   While pulling image: manifest unknown: " + ref)
    Path(out).write_text(json.dumps({{"labels": known[ref], "ref": ref}}))
elif cmd == "inspect":
    labels = json.loads(Path(rest[-1]).read_text())["labels"]
    print(json.dumps({{"data": {{"attributes": {{"labels": labels}}}}}}))
else:
    sys.exit("fake apptainer: unknown command " + cmd)
"""


def install(bindir: Path, registry: dict[str, dict[str, str]] | None = None) -> Path:
    """Write the fake `apptainer` into `bindir`; `registry`: labels per pullable reference."""
    return install_command(bindir, "apptainer", SCRIPT, registry)


def calls(bindir: Path, command: str) -> int:
    """How many times `apptainer COMMAND` ran."""
    return count_calls(bindir, command)
