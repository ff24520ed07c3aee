"""A stand-in `podman-hpc` for the test "login node" (no podman here), written into a directory
that the test sshd's login shells put first on PATH. It keeps its images in store.json beside
it, as podman's image store keeps them by ID:

  podman-hpc --version                  `podman-hpc version 1.1.4-fake`
  podman-hpc build -f FILE -t NAME .    an image whose ID is the sha256 of FILE and the files of
                                        the context it COPYs, its labels FILE's LABEL lines
  podman-hpc migrate NAME               marks it squashed (what compute nodes read)
  podman-hpc pull REF                   an image with the labels registry.json has for REF (pull
                                        migrates, as podman-hpc's does); unknown REF: fails
  podman-hpc image inspect REF          podman's JSON (Id, Digest, Size, Labels) for a name or
                                        an ID; exit 125 "image not known" otherwise
  podman-hpc rmi NAME                   drops the name

Every call is appended to calls.log beside it; a file `fail-COMMAND` beside it makes that
command fail with the file's text.
"""

from __future__ import annotations

import json
from pathlib import Path

from testkit.fake_command import count_calls, install_command

SCRIPT = """#!{python}
import hashlib, json, shlex, sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
with open(HERE / "calls.log", "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:1] in (["--version"], ["version"]):
    print("podman-hpc version 1.1.4-fake")
    sys.exit(0)
cmd = args[0]
if (HERE / ("fail-" + cmd)).exists():
    sys.exit((HERE / ("fail-" + cmd)).read_text())
store_path = HERE / "store.json"
store = json.loads(store_path.read_text())
def find(ref):
    for iid, img in store.items():
        if ref == iid or ref in img["names"]:
            return iid, img
    print("Error: " + ref + ": image not known", file=sys.stderr)
    sys.exit(125)
def save():
    store_path.write_text(json.dumps(store))
if cmd == "build":
    f = args[args.index("-f") + 1]
    name = args[args.index("-t") + 1]
    text = Path(f).read_text()
    h = hashlib.sha256(text.encode())
    labels = {{}}
    for line in text.splitlines():
        if line.startswith("LABEL "):
            key, _, value = line[6:].partition("=")
            labels[key] = value.strip().strip('"')
        if line.startswith("COPY "):
            src = Path(line.split()[1])
            if not src.exists():  # COPY paths are relative to the build context (the cwd)
                sys.exit("Error: building at STEP COPY: checking on sources: no such file " + str(src))
            for p in sorted([src] if src.is_file() else src.rglob("*")):
                if p.is_file():
                    h.update(p.read_bytes())
    iid = h.hexdigest()
    for img in store.values():
        img["names"] = [n for n in img["names"] if n != name]
    store[iid] = {{"names": [name], "labels": labels, "migrated": False}}
    save()
    print("COMMIT " + name)
elif cmd == "migrate":
    iid, img = find(args[1])
    img["migrated"] = True
    save()
elif cmd == "pull":
    ref = args[-1]
    known = json.loads((HERE / "registry.json").read_text())
    if ref not in known:
        sys.exit("Error: initializing source docker://" + ref + ": manifest unknown")
    iid = hashlib.sha256(ref.encode()).hexdigest()
    store[iid] = {{"names": [ref], "labels": known[ref], "migrated": True}}
    save()
elif cmd == "image" and args[1] == "inspect":
    iid, img = find(args[2])
    print(json.dumps([{{"Id": iid, "Digest": "sha256:" + hashlib.sha256(iid.encode()).hexdigest(),
                        "Size": 1000, "Labels": img["labels"], "Migrated": img["migrated"]}}]))
elif cmd == "rmi":
    iid, img = find(args[1])
    img["names"].remove(args[1])
    save()
else:
    sys.exit("fake podman-hpc: unknown command " + cmd)
"""


def install(bindir: Path, registry: dict[str, dict[str, str]] | None = None) -> Path:
    """Write the fake `podman-hpc` into `bindir`; `registry`: labels per pullable reference."""
    return install_command(bindir, "podman-hpc", SCRIPT, registry, {"store.json": "{}"})


def store(bindir: Path) -> dict:
    return json.loads((bindir / "store.json").read_text())


def calls(bindir: Path, command: str) -> int:
    """How many times `podman-hpc COMMAND` ran."""
    return count_calls(bindir, command)
