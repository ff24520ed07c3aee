"""`make image-check`: a real image build here, and a federation whose workers run inside it.
Test scaffolding, not part of the product (tests/test_images.py runs it with
CROSSFL_IMAGE_CHECK=1; `python -m testkit.image_check [ARCH]` runs it by hand).

1. The cpu-debian root filesystem (testkit.rootfs): Debian bookworm packages, then the
   rendered def's %files and %post, as Apptainer builds a sandbox. The host's proxies and pip
   settings reach %post as build arguments, as they would at a facility (PIP_FIND_LINKS: its
   local directories are bound in read-only for the build).
2. `apptainer test` and `apptainer run IMAGE globus-compute-endpoint version` in it.
3. A two-site federation (the kit's own driver and engines, the demo data and tiny model,
   two rounds) whose site
   is `container.runtime: custom` with a bubblewrap command in the place of `apptainer run`:
   Globus Compute's engine starts every worker inside the rootfs, and each training result
   names the interpreter that ran it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images import build_arg_values, display_path, image_pins, images_dir
from testkit.rootfs import Rootfs, build_rootfs, bwrap_run, mount_points, run_action

ARCH = "cpu-debian"
SITE = "local-rootfs"
DATA_DIR = "build/data/chem"  # `make data`
MODEL_DIR = "build/models/tiny-llama"  # `make model`


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


def federation_project(rootfs: Path) -> tuple[Path, Path]:
    """A project directory for the check's run: the catalog entry of the rootfs site, the
    templates, and an experiment over this checkout's demo data and tiny model (`make data
    model`), two sites, two rounds. Returns (project, experiment file)."""
    source = paths.project_root()
    data, model = source / DATA_DIR, source / MODEL_DIR
    if not (data / "train.jsonl").is_file() or not (model / "config.json").is_file():
        raise UserError(
            f"the image check trains the demo model on the demo data: "
            f"{DATA_DIR}/train.jsonl or {MODEL_DIR}/config.json is missing",
            fix="run `make data model` first (`make image-check` does)",
        )
    project = images_dir() / "image-check-project"
    shutil.rmtree(project / "runs", ignore_errors=True)  # the previous check's runs
    (project / "deploy" / "sites").mkdir(parents=True, exist_ok=True)
    templates = project / "site_templates"
    if not templates.exists():
        templates.symlink_to(source / "site_templates")
    write_site(project, rootfs, [str(project), str(data), str(model)])
    experiment = {
        "name": "image-check",
        "model": {"path": str(model)},
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl")},
        "sites": [{"name": "inside-a", "site": SITE}, {"name": "inside-b", "site": SITE}],
        "rounds": 2,
        "training": {
            "local_steps": 2,
            "batch_size": 4,
            "lr": 0.005,
            "max_length": 96,
            "max_samples": 64,
            "torch_threads": 1,
        },
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "evaluation": {"max_samples": 8, "batch_size": 8, "generate_max_new_tokens": 4},
        "task_timeout_s": 3600,  # a busy machine is slow, not broken
    }
    exp_file = project / "image-check.yaml"
    exp_file.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return project, exp_file


def run_federation(rootfs: Path, log: Path) -> dict:
    """Two sites, two rounds, every worker inside the rootfs. Returns the run directory and
    the interpreter each training task reported."""
    from rich.console import Console

    from crossfl.server.experiment import load_experiment
    from crossfl.server.lifecycle import run_experiment

    project, exp_file = federation_project(rootfs)
    before = os.environ.get("CROSSFL_ROOT")
    os.environ["CROSSFL_ROOT"] = str(project)
    console = Console(file=io.StringIO(), width=100, record=True)
    start = time.monotonic()
    try:
        experiment, exp_path = load_experiment(exp_file)
        run_dir = run_experiment(experiment, exp_path, console)
    finally:
        if before is None:
            os.environ.pop("CROSSFL_ROOT", None)
        else:
            os.environ["CROSSFL_ROOT"] = before
        with log.open("a") as handle:
            handle.write(f"==== federation\n{console.export_text()}\n")
    seconds = time.monotonic() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tasks = [r for r in records if r.get("kind") == "task"]
    return {
        "run_dir": str(run_dir),
        "seconds": seconds,
        "tasks": [
            {k: t.get(k) for k in ("round", "site", "status", "python", "host")} for t in tasks
        ],
        "rounds": [r for r in records if r.get("kind") == "round"],
    }


def check_image(
    arch: str = ARCH,
    *,
    federation: bool = True,
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
    result: dict = {}
    if federation:
        progress("a two-round federation whose workers start inside the root filesystem")
        result = run_federation(rootfs.path, log)
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


def main(argv: list[str] | None = None) -> int:
    """`python -m testkit.image_check [ARCH] [--no-federation]`: each step announced as it
    starts (the first at once: an uncached build takes minutes), one line at the end."""
    parser = argparse.ArgumentParser(prog="python -m testkit.image_check", description=__doc__)
    parser.add_argument("arch", nargs="?", default=ARCH, help="a debootstrap arch (cpu-debian)")
    parser.add_argument(
        "--no-federation", action="store_true", help="skip the federation inside the rootfs"
    )
    args = parser.parse_args(argv)
    try:
        result = check_image(
            args.arch,
            federation=not args.no_federation,
            progress=lambda step: print(f"... {step}", flush=True),
        )
    except UserError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    steps = ", ".join(f"{name} {sec:.0f} s" for name, sec in result.seconds.items())
    inside = sorted({t["python"] for t in result.federation.get("tasks", [])})
    print(
        f"{args.arch}: ok ({'cached rootfs; ' if result.cached else ''}{steps}); torch "
        f"{result.torch}; workers ran {', '.join(inside) or 'not run'}; log "
        f"{display_path(check_log(args.arch))}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
