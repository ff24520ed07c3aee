"""`apptainer build`, `sign` and `inspect` on the rendered def; each built image recorded
in the manifest."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images.arches import get_arch
from crossfl.images.buildenv import build_arg_values
from crossfl.images.definition import render_def
from crossfl.images.layout import display_path, sif_path
from crossfl.images.manifest import ManifestEntry, image_digest, record_image

GET_APPTAINER = (
    "install Apptainer (apptainer.org/docs/admin/main/installation.html) "
    "or `module load apptainer` on a facility login node"
)


def apptainer() -> str:
    exe = shutil.which("apptainer")
    if exe is None:
        raise UserError(f"apptainer is not on PATH: {GET_APPTAINER}")
    return exe


def inspect_labels(exe: str, sif: Path) -> dict[str, str]:
    out = subprocess.run(
        [exe, "inspect", "--labels", "--json", display_path(sif)],
        cwd=paths.project_root(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise UserError(f"apptainer inspect failed: {out.stderr.strip()}", file=display_path(sif))
    data = json.loads(out.stdout or "{}")
    found = data.get("data", {}).get("attributes", {}).get("labels", data)
    return {str(key): str(value) for key, value in (found or {}).items()}


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, cwd=paths.project_root())
    if done.returncode != 0:
        raise UserError(f"{what} failed with exit {done.returncode} (its output is above)")


def build_image(arch: str, *, fakeroot: bool | None = None) -> ManifestEntry:
    """Render the def, `apptainer build` it from the project root into crossfl-ARCH.sif (via a
    .partial file, so a failed build leaves the previous image), record digest and labels.
    The proxies and pip settings of this environment go in as build arguments (%post sees
    none of the host's environment)."""
    definition = render_def(arch)
    exe = apptainer_or_explain(definition)
    if fakeroot is None:
        fakeroot = os.geteuid() != 0
    sif = sif_path(arch)
    partial = sif.with_name(sif.name + ".partial")
    partial.unlink(missing_ok=True)
    build_args = [f"--build-arg={k}={v}" for k, v in build_arg_values(os.environ).items()]
    argv = [
        exe,
        "build",
        *(["--fakeroot"] if fakeroot else []),
        *build_args,
        display_path(partial),
        display_path(definition),
    ]
    try:
        _run(argv, "apptainer build")
        if not partial.is_file():
            raise UserError(f"apptainer build left no image at {display_path(partial)}")
        os.replace(partial, sif)
    finally:
        partial.unlink(missing_ok=True)
    return _record(arch, exe, signed=False)


def apptainer_or_explain(definition: Path) -> str:
    try:
        return apptainer()
    except UserError:
        raise UserError(
            f"apptainer is not on PATH, so no image was built: {GET_APPTAINER}; "
            f"the def file is ready at {display_path(definition)}"
        ) from None


def _record(arch: str, exe: str, *, signed: bool) -> ManifestEntry:
    sif = sif_path(arch)
    found = inspect_labels(exe, sif)
    entry = ManifestEntry(
        arch=arch,
        image=display_path(sif),
        digest=image_digest(sif),
        size_bytes=sif.stat().st_size,
        built_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        git_commit=found.get("org.crossfl.git-commit", ""),
        signed=signed,
        labels=found,
    )
    record_image(entry)
    return entry


def sign_image(arch: str, *, key: Path | None = None) -> ManifestEntry:
    """`apptainer sign` the built image (signing rewrites the file: the digest is re-recorded)."""
    get_arch(arch)
    sif = sif_path(arch)
    if not sif.is_file():
        raise UserError(f"no image at {display_path(sif)}", fix=f"make image ARCH={arch}")
    exe = apptainer()
    argv = [exe, "sign", *(["--key", str(key)] if key else []), display_path(sif)]
    _run(argv, "apptainer sign")
    return _record(arch, exe, signed=True)
