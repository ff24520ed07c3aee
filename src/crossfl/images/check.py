"""Running a rendered def file's %files, %post, %test and %runscript here, in a throwaway
tree standing in for the image (`make image-check`)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images.arches import get_arch, load_arches
from crossfl.images.definition import render_def
from crossfl.images.defparse import apply_build_args, files, parse_def
from crossfl.images.layout import PREFIX, images_dir
from crossfl.images.pins import image_pins


class StepsCheck(BaseModel):
    arch: str
    workdir: str
    seconds: dict[str, float]
    torch: str
    devices: dict


def _local_interpreter(minor: str) -> str:
    base = Path(sys._base_executable)  # the interpreter under this venv
    found = shutil.which(f"python{minor}") or (str(base) if sys.version_info[:2] == tuple(
        int(part) for part in minor.split(".")) else None)
    if not found:
        raise UserError(f"no python{minor} here to stand in for the base image's interpreter")
    return found


def _copy_like_cp_r(src: Path, dst: Path) -> None:
    """What Apptainer's %files does (`cp -fLr SRC DST`, parents created)."""
    if dst.is_dir():
        dst = dst / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def _run_script(name: str, script: str, work: Path, log: Path, env: dict[str, str],
                args: list[str] | None = None) -> tuple[float, str]:
    path = work / f"{name}.sh"
    path.write_text(script)
    start = dt.datetime.now()
    done = subprocess.run(["/bin/sh", str(path), *(args or [])], cwd=work, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = (dt.datetime.now() - start).total_seconds()
    with log.open("a") as handle:
        handle.write(f"==== {name} ({seconds:.1f} s, exit {done.returncode})\n{done.stdout}\n")
    if done.returncode != 0:
        tail = " | ".join(done.stdout.strip().splitlines()[-3:])
        raise UserError(f"%{name} failed with exit {done.returncode}: {tail}", file=log)
    return seconds, done.stdout


def check_build_steps(arch: str = "cpu", *, workdir: Path | None = None,
                      keep: bool = False) -> StepsCheck:
    """Run the rendered def file's %files, %post, %test and %runscript here, in a throwaway tree
    standing in for the image: the same lines, with only the image paths substituted
    (/opt/crossfl -> WORKDIR/rootfs/opt/crossfl, the base image's interpreter -> this machine's
    python of the same minor). Only for an arch whose base image brings the interpreter (cpu):
    the others fetch it and a vendor torch that this machine cannot run."""
    table = load_arches()
    spec = get_arch(arch, table)
    if spec.python.source != "base":
        raise UserError(f"{arch}: its build fetches Python and a {spec.stack} torch; only an arch "
                        "whose base image brings Python can be checked here (cpu)", field="ARCH")
    definition = render_def(arch)
    stage = parse_def(apply_build_args(definition.read_text())).only_stage()
    work = workdir or Path(tempfile.mkdtemp(prefix=f"crossfl-image-check-{arch}-"))
    rootfs = work / "rootfs"
    log = images_dir() / f"image-check-{arch}.log"   # kept when the throwaway tree is gone
    log.write_text("")
    interpreter = _local_interpreter(image_pins(arch, table).python_minor)

    def localize(body: str) -> str:
        return body.replace(PREFIX, str(rootfs) + PREFIX).replace(spec.python.path, interpreter)

    venv_bin = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items()
           if key not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CROSSFL_DEVICE"}}
    env["PATH"] = os.pathsep.join(part for part in env.get("PATH", "").split(os.pathsep)
                                  if part != venv_bin)
    # Where the torch channel is unreachable (offline CI), pip would retry it 5 times for torch
    # and each of its dependencies; once is enough to learn that. The lines stay the same.
    env.setdefault("PIP_RETRIES", "1")
    seconds: dict[str, float] = {}
    try:
        for src, dst in files(stage):
            _copy_like_cp_r(paths.project_root() / src, rootfs / dst.lstrip("/"))
        environment = localize(stage.sections["environment"].body)
        seconds["post"], _ = _run_script("post", localize(stage.sections["post"].body), work,
                                         log, env)
        seconds["test"], out = _run_script(
            "test", environment + localize(stage.sections["test"].body), work, log, env)
        devices = next((json.loads(line) for line in out.splitlines() if line.startswith("{")),
                       {})
        seconds["runscript"], out = _run_script(
            "runscript", environment + localize(stage.sections["runscript"].body), work, log,
            env, ["globus-compute-endpoint", "version"])
        want = image_pins(arch, table).shared["globus-compute-endpoint"]
        if want not in out:
            raise UserError(f"%runscript did not hand `globus-compute-endpoint version` to the "
                            f"worker command (expected {want} in its output)", file=log)
        python = rootfs / PREFIX.lstrip("/") / "venv" / "bin" / "python"
        torch = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"],
                               capture_output=True, text=True, env=env).stdout.strip()
        return StepsCheck(arch=arch, workdir=str(work), seconds=seconds, torch=torch,
                          devices=devices)
    finally:
        if not keep:
            shutil.rmtree(work if workdir is None else rootfs, ignore_errors=True)
