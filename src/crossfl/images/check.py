"""`make image-check`: a real image build here, and a federation whose workers run inside it.

1. The cpu-debian root filesystem (crossfl.images.rootfs): Debian bookworm packages, then the
   rendered def's %files and %post, as Apptainer builds a sandbox. The host's proxies and pip
   settings reach %post as build arguments, as they would at a facility (PIP_FIND_LINKS: its
   local directories are bound in read-only for the build).
2. `apptainer test` and `apptainer run IMAGE globus-compute-endpoint version` in it.
3. A two-site federation (crossfl.server.image_check: the kit's own driver and engines, the
   demo data and tiny model, two rounds) whose site
   is `container.runtime: custom` with a bubblewrap command in the place of `apptainer run`:
   Globus Compute's engine starts every worker inside the rootfs, and each training result
   names the interpreter that ran it.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel

from crossfl.errors import UserError
from crossfl.images.buildenv import build_arg_values
from crossfl.images.layout import PREFIX, images_dir
from crossfl.images.pins import image_pins
from crossfl.images.rootfs import Rootfs, build_rootfs, bwrap_run, mount_points, run_action

ARCH = "cpu-debian"
SITE = "local-rootfs"
IMAGE_PYTHON = f"{PREFIX}/venv/bin/python"


class ImageCheck(BaseModel):
    arch: str
    rootfs: str
    cached: bool
    seconds: dict[str, float]
    torch: str
    devices: dict
    federation: dict


def check_log(arch: str = ARCH) -> Path:
    return images_dir() / f"image-check-{arch}.log"


def build_settings() -> tuple[dict[str, str], list[str]]:
    """The build arguments taken from this environment, and the local paths they name
    (PIP_FIND_LINKS directories, the PIP_CERT bundle), bound in read-only for %post. Where the
    torch channel is unreachable (offline CI), pip would retry it 5 times for torch and each of
    its dependencies: once is enough to learn that (PIP_RETRIES=1 unless set)."""
    values = build_arg_values(os.environ)
    values.setdefault("PIP_RETRIES", "1")
    local = [p for p in values.get("PIP_FIND_LINKS", "").split() if Path(p).is_dir()]
    local += [p for p in [values.get("PIP_CERT", "")] if p and Path(p).is_file()]
    return values, local


def site_command(rootfs: Path, binds: list[str]) -> str:
    """The engine's worker launch: bubblewrap where the facility has `apptainer run`, with
    `binds` (the project's run directories, the model and the data) and the engine's run
    directory bound in."""
    mount_points(rootfs, binds)
    return (
        f"{shlex.join(bwrap_run(rootfs, binds))} --bind {{EXECUTOR_RUNDIR}} "
        f"{{EXECUTOR_RUNDIR}} /.singularity.d/actions/run {{EXECUTOR_LAUNCH_CMD}}"
    )


def write_site(project: Path, rootfs: Path, binds: list[str]) -> Path:
    site = {
        "name": SITE,
        "description": "this machine; the engine's workers start inside the cpu-debian root "
        "filesystem (bubblewrap in the place of apptainer run)",
        "scheduler": "local",
        "accelerator": {"vendor": "none", "devices_per_node": 0},
        "container": {
            "runtime": "custom",
            "images": {"cpu": str(rootfs)},
            "command": site_command(rootfs, binds),
        },
        "launcher": {"type": "single"},
        "endpoint": {
            "mode": "single-user",
            "display_name": f"crossfl {SITE}",
            "encrypted": True,
            "max_workers_per_node": 1,
        },
    }
    path = project / "deploy" / "sites" / f"{SITE}.yaml"
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


Federation = Callable[[Path, Path], dict]
"""A run whose workers start inside the rootfs: (rootfs, log) -> what it recorded
(crossfl.server.image_check.run_federation; the server package imports this one)."""


def check_image(
    arch: str = ARCH,
    *,
    federation: Federation | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ImageCheck:
    """Build (or reuse) ARCH's root filesystem, run its %test and %runscript, then the
    federation; ``progress`` hears of each step as it starts, the log's path first."""
    log = check_log(arch)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    progress(f"{arch}: every step's output goes to {log}")
    args, local_dirs = build_settings()
    rootfs: Rootfs = build_rootfs(arch, args, log, ro_binds=local_dirs, progress=progress)
    seconds = dict(rootfs.seconds) if not rootfs.cached else {}
    progress("%test (apptainer test, under bubblewrap)")
    seconds["test"], out = run_action(rootfs, "test", [], log)
    devices = next((json.loads(line) for line in out.splitlines() if line.startswith("{")), {})
    progress("%runscript: globus-compute-endpoint version")
    seconds["runscript"], out = run_action(
        rootfs, "run", ["globus-compute-endpoint", "version"], log
    )
    want = image_pins(arch).shared["globus-compute-endpoint"]
    if want not in out:
        raise UserError(
            f"%runscript did not hand `globus-compute-endpoint version` to the worker "
            f"command (expected {want} in its output)",
            file=log,
        )
    if federation is not None:
        progress("a two-round federation whose workers start inside the root filesystem")
    result = federation(rootfs.path, log) if federation is not None else {}
    if federation is not None:
        seconds["federation"] = result["seconds"]
    return ImageCheck(
        arch=arch,
        rootfs=str(rootfs.path),
        cached=rootfs.cached,
        seconds=seconds,
        torch=str(devices.get("torch", "")),
        devices=devices,
        federation=result,
    )
