"""The catalog's sites as the golden tests load them (tests/golden/overrides: an account, a
project directory), optionally handing out a node's devices another way than the catalog does
(`endpoint.tasks`: the facilities run `mpi`; their per-device workers are still a mode)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from crossfl import sites

OVERRIDES = Path(__file__).parent / "golden" / "overrides"


def golden_site(name: str, tasks: str | None = None) -> sites.Site:
    ov = OVERRIDES / f"{name}.yaml"
    data = yaml.safe_load(ov.read_text()) if ov.is_file() else {}
    if tasks is None:
        return sites.load_site(name, overrides=ov if ov.is_file() else None)
    data = {**(data or {}), "endpoint": {**(data or {}).get("endpoint", {}), "tasks": tasks}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return sites.load_site(name, overrides=path)
