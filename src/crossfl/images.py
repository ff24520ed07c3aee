"""Worker images: one Apptainer definition per accelerator, rendered from containers/crossfl.def.j2
and containers/arches.yaml into build/images/crossfl-ARCH.def; `apptainer build`/`sign` on it;
the sha256 and labels of every built image in build/images/manifest.json.

Versions come from requirements/constraints.txt (the login node's own pins), which the image
copies in and installs with: parsl, dill and globus-compute-endpoint cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import jinja2
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel, Field, StringConstraints, ValidationError, model_validator

from crossfl import __version__, paths
from crossfl.atomic import atomic_write_bytes, new_dir
from crossfl.errors import UserError
from crossfl.hashing import sha256_file
from crossfl.schema import StrictModel, user_error
from crossfl.yamlio import load_yaml

PREFIX = "/opt/crossfl"
TEMPLATE = "crossfl.def.j2"
ARCHES_FILE = "arches.yaml"
CHECKER = "check_image.py"
# Must be equal on the login node and in every image, or the endpoint refuses the workers.
MUST_AGREE = ("parsl", "dill", "globus-compute-endpoint", "globus-compute-sdk")
GET_APPTAINER = ("install Apptainer (apptainer.org/docs/admin/main/installation.html) "
                 "or `module load apptainer` on a facility login node")
SECTIONS = frozenset({"arguments", "setup", "files", "post", "environment", "runscript",
                      "startscript", "test", "labels", "help"})


# ---------------------------------------------------------------- the per-accelerator table

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]
ArchName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*$")]


class PythonSource(StrictModel):
    source: Literal["base", "uv"]
    path: str = ""

    @model_validator(mode="after")
    def _base_needs_path(self) -> PythonSource:
        if self.source == "base" and not self.path.startswith("/"):
            raise ValueError("source 'base' needs the interpreter's absolute path in `path`")
        return self


class TorchChannel(StrictModel):
    local: str = Field(pattern=r"^[a-z0-9.]+$", description="local version tag, e.g. cu128")
    index_url: str = Field(pattern=r"^https://\S+$")


class ArchSpec(StrictModel):
    description: str
    bootstrap: Literal["docker", "localimage", "docker-archive", "oci-archive", "oras"]
    base: str = Field(pattern=r"^\S+$")
    python: PythonSource
    torch: TorchChannel
    stack: Literal["cpu", "cuda", "rocm", "xpu"]
    stack_version: str | None = None
    env: dict[EnvName, str] = Field(default_factory=dict)


class ArchTable(StrictModel):
    python_version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    uv_version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    arches: dict[ArchName, ArchSpec]


def load_arches(path: Path | None = None) -> ArchTable:
    path = path or paths.containers_dir() / ARCHES_FILE
    try:
        return ArchTable.model_validate(load_yaml(path))
    except ValidationError as exc:
        raise user_error(exc, file=path, schema="src/crossfl/images.py (ArchTable)") from None


def arch_names() -> list[str]:
    return sorted(load_arches().arches)


def get_arch(name: str, table: ArchTable | None = None) -> ArchSpec:
    table = table or load_arches()
    if name not in table.arches:
        raise UserError(f"unknown ARCH {name!r}; allowed: {', '.join(sorted(table.arches))}",
                        field="ARCH")
    return table.arches[name]


# ---------------------------------------------------------------- pins shared with the login node

def read_constraints(path: Path | None = None) -> dict[str, str]:
    """`name==version` lines of requirements/constraints.txt, keyed by canonical name."""
    path = path or paths.project_root() / "requirements" / "constraints.txt"
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if not match:
            raise UserError(f"line {number} is not `name==version`: {line!r}", file=path)
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def worker_requirements(path: Path | None = None) -> list[str]:
    """The names in requirements/worker.txt (versions belong in constraints.txt)."""
    path = path or paths.project_root() / "requirements" / "worker.txt"
    names = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            raise UserError(f"{line!r}: names only here, versions live in constraints.txt",
                            file=path)
        names.append(canonicalize_name(line))
    return names


def python_minor(pyproject: Path | None = None) -> str:
    """The one Python minor that pyproject's requires-python allows (the endpoint's)."""
    pyproject = pyproject or paths.project_root() / "pyproject.toml"
    text = tomllib.loads(pyproject.read_text())["project"].get("requires-python", "")
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier:
        raise UserError(f"requires-python {text!r} is not a specifier", file=pyproject) from None
    minors = [f"3.{m}" for m in range(6, 30) if spec.contains(f"3.{m}.0")]
    if len(minors) != 1:
        raise UserError(f"requires-python {text!r} must allow exactly one minor (it allows "
                        f"{', '.join(minors) or 'none'}): workers must run the endpoint's",
                        file=pyproject, field="project.requires-python")
    return minors[0]


class ImagePins(BaseModel):
    python_minor: str
    torch: str            # with the vendor's local tag, e.g. 2.13.0+cu128
    shared: dict[str, str]  # distribution -> version, equal to the login node's


def image_pins(arch: str, table: ArchTable | None = None) -> ImagePins:
    root = paths.project_root()
    table = table or load_arches()
    spec = get_arch(arch, table)
    constraints_path = root / "requirements" / "constraints.txt"
    constraints = read_constraints(constraints_path)
    minor = python_minor()
    arches_path = paths.containers_dir() / ARCHES_FILE
    if not table.python_version.startswith(minor + "."):
        raise UserError(f"{table.python_version} is not Python {minor}, the endpoint's minor",
                        file=arches_path, field="python_version")
    if spec.python.source == "base" and not spec.python.path.endswith(f"python{minor}"):
        raise UserError(f"{spec.python.path} is not a python{minor} interpreter",
                        file=arches_path, field=f"arches.{arch}.python.path")
    extra_path = root / "requirements" / "worker-pins.txt"
    extra = read_constraints(extra_path)
    twice = sorted(set(extra) & set(constraints))
    if twice:
        raise UserError(f"{', '.join(twice)} pinned here and in constraints.txt", file=extra_path,
                        fix="keep shared pins in constraints.txt only")
    wanted = list(dict.fromkeys([*worker_requirements(), *MUST_AGREE, "torch"]))
    missing = [name for name in wanted if name not in constraints]
    if missing:
        raise UserError(f"no pin for {', '.join(missing)}", file=constraints_path,
                        fix="pin them there (name==version): images install with -c that file")
    shared = {name: constraints[name] for name in wanted if name != "torch"}
    torch = constraints["torch"].split("+", 1)[0] + "+" + spec.torch.local
    return ImagePins(python_minor=minor, torch=torch, shared=shared)


# ---------------------------------------------------------------- rendering

def images_dir() -> Path:
    return paths.build_dir() / "images"


def def_path(arch: str) -> Path:
    return images_dir() / f"crossfl-{arch}.def"


def sif_path(arch: str) -> Path:
    return images_dir() / f"crossfl-{arch}.sif"


def manifest_path() -> Path:
    return images_dir() / "manifest.json"


def display_path(path: Path) -> str:
    """A path as the def file and argv name it: relative to the project root when inside it."""
    try:
        return str(path.resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path.resolve())


def git_commit() -> str:
    root = paths.project_root()
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError("not a git checkout with a commit: an image records the commit its "
                        "crossfl package comes from", file=root, fix="build from a clone")
    return out.stdout.strip()


def _stage_context(context: Path, commit: str) -> None:
    """What %files copies in: the pins, the worker list, the checker, and the crossfl package
    exactly as committed (`git archive`), so the labels' commit is what the image holds."""
    root = paths.project_root()
    with new_dir(context) as tmp:
        shutil.copy2(root / "requirements" / "constraints.txt", tmp / "constraints.txt")
        shutil.copy2(root / "requirements" / "worker.txt", tmp / "worker.txt")
        shutil.copy2(root / "requirements" / "worker-pins.txt", tmp / "worker-pins.txt")
        shutil.copy2(paths.containers_dir() / CHECKER, tmp / CHECKER)
        members = ["pyproject.toml", "src/crossfl"]
        listed = subprocess.run(["git", "ls-tree", "--name-only", commit, "README.md"],
                                cwd=root, capture_output=True, text=True).stdout.strip()
        members += [listed] if listed else []
        archive = subprocess.run(["git", "archive", "--format=tar", commit, *members],
                                 cwd=root, capture_output=True)
        if archive.returncode != 0:
            raise UserError(f"git archive failed: {archive.stderr.decode().strip()}", file=root)
        (tmp / "src").mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp / "src", filter="data")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.containers_dir()),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["sh"] = shlex.quote
    return env


def check_args(spec: ArchSpec, pins: ImagePins) -> str:
    """The arguments %post and %test pass to check_image.py."""
    args = ["--python-minor", pins.python_minor, "--torch", pins.torch, "--stack", spec.stack]
    if spec.stack_version:
        args += ["--stack-version", spec.stack_version]
    for name, version in pins.shared.items():
        args += ["--pin", f"{name}=={version}"]
    return shlex.join(args)


def render_text(arch: str, *, context: str, commit: str) -> str:
    table = load_arches()
    spec = get_arch(arch, table)
    pins = image_pins(arch, table)
    text = _environment().get_template(TEMPLATE).render(
        name=arch, arch=spec, prefix=PREFIX, context=context, git_commit=commit,
        crossfl_version=__version__, python_version=table.python_version,
        uv_version=table.uv_version, python_minor=pins.python_minor, torch_version=pins.torch,
        shared_pins=pins.shared, check_args=check_args(spec, pins),
        def_path=display_path(def_path(arch)), sif_path=display_path(sif_path(arch)))
    parse_def(text)  # the template must yield a def file this parser (and Apptainer) accepts
    return text


def render_def(arch: str) -> Path:
    """Render build/images/crossfl-ARCH.def and stage its %files beside it. Returns the def."""
    get_arch(arch)
    out = def_path(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    context = out.parent / f"crossfl-{arch}.context"
    text = render_text(arch, context=display_path(context), commit=commit)
    _stage_context(context, commit)
    atomic_write_bytes(out, text.encode())
    return out


# ---------------------------------------------------------------- the def-file parser

class Section(BaseModel):
    name: str
    args: str = ""
    body: str = ""


class Stage(BaseModel):
    header: dict[str, str]
    sections: dict[str, Section]


class DefFile(BaseModel):
    stages: list[Stage]

    def only_stage(self) -> Stage:
        if len(self.stages) != 1:
            raise ValueError(f"{len(self.stages)} stages, expected one")
        return self.stages[0]


_SECTION = re.compile(r"^%([A-Za-z]+)(?:[ \t]+(.*))?$")
_HEADER = re.compile(r"^([A-Za-z][A-Za-z0-9]*):[ \t]*(.*)$")


def parse_def(text: str) -> DefFile:
    """Split an Apptainer definition file into stages (each begins with `Bootstrap:`), their
    header keywords and their %sections, as Apptainer's own parser reads them. Raises ValueError
    naming the line for what Apptainer would refuse."""
    stages: list[Stage] = []
    section: Section | None = None
    body: list[str] = []

    def close() -> None:
        if section is not None:
            section.body = "\n".join(body).strip("\n") + "\n" if any(body) else ""

    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header and header.group(1).lower() == "bootstrap" and (section or not stages):
            close()
            section, body = None, []
            stages.append(Stage(header={}, sections={}))
        match = _SECTION.match(line)
        if match and match.group(1).lower() not in SECTIONS:
            raise ValueError(f"line {number}: unknown section %{match.group(1)}")
        if match:
            if not stages:
                raise ValueError(f"line {number}: %{match.group(1)} before any Bootstrap:")
            close()
            name = match.group(1).lower()
            if name in stages[-1].sections:
                raise ValueError(f"line {number}: a second %{name} in one stage")
            section, body = Section(name=name, args=(match.group(2) or "").strip()), []
            stages[-1].sections[name] = section
            continue
        if section is not None:
            body.append(line)
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not header:
            raise ValueError(f"line {number}: not a `Keyword: value` header: {line!r}")
        if not stages:
            raise ValueError(f"line {number}: the file must begin with Bootstrap:")
        stages[-1].header[header.group(1).lower()] = header.group(2).strip()
    close()
    if not stages:
        raise ValueError("no Bootstrap: header")
    for index, stage in enumerate(stages, 1):
        if stage.header.get("bootstrap") in {"docker", "localimage", "oras", "library"} \
                and not stage.header.get("from"):
            raise ValueError(f"stage {index}: Bootstrap {stage.header['bootstrap']} needs From:")
    return DefFile(stages=stages)


def build_args(stage: Stage) -> dict[str, str]:
    """%arguments defaults (KEY=VALUE lines)."""
    section = stage.sections.get("arguments")
    out: dict[str, str] = {}
    for line in (section.body if section else "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"%arguments: {line!r} is not KEY=VALUE")
            out[key.strip()] = value.strip()
    return out


def apply_build_args(text: str, overrides: dict[str, str] | None = None) -> str:
    """Replace `{{ KEY }}` the way `apptainer build --build-arg KEY=...` does."""
    values = {**build_args(parse_def(text).stages[-1]), **(overrides or {})}

    def sub(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise ValueError(f"build argument {match.group(1)} has no value")
        return values[match.group(1)]

    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", sub, text)


def labels(stage: Stage) -> dict[str, str]:
    section = stage.sections.get("labels")
    out = {}
    for line in (section.body if section else "").splitlines():
        if line.strip():
            key, _, value = line.strip().partition(" ")
            out[key] = value.strip()
    return out


def files(stage: Stage) -> list[tuple[str, str]]:
    section = stage.sections.get("files")
    pairs = []
    for line in (section.body if section else "").splitlines():
        parts = shlex.split(line, comments=True)
        if parts:
            pairs.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
    return pairs


# ---------------------------------------------------------------- digests and the manifest

def image_digest(path: str | Path) -> str:
    """`sha256:<hex>` of an image file."""
    return "sha256:" + sha256_file(path)


class ManifestEntry(BaseModel):
    arch: str
    image: str
    digest: str
    size_bytes: int
    built_at: str
    git_commit: str
    signed: bool = False
    labels: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    schema_version: Literal[1] = 1
    images: dict[str, ManifestEntry] = Field(default_factory=dict)


def read_manifest(path: Path | None = None) -> dict:
    """build/images/manifest.json as plain data: {"schema_version": 1, "images": {ARCH: {...,
    "digest": "sha256:...", "labels": {...}}}}; empty images when nothing was built yet."""
    return _load_manifest(path or manifest_path()).model_dump()


def _load_manifest(path: Path) -> Manifest:
    if not path.exists():
        return Manifest()
    try:
        return Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise user_error(exc, file=path, what="not a crossfl image manifest",
                         fix="delete it and rebuild the images") from None


@contextmanager
def _manifest_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record_image(entry: ManifestEntry, path: Path | None = None) -> None:
    """Set one arch's entry, keeping the others; the file is replaced atomically."""
    path = path or manifest_path()
    with _manifest_lock(path):
        manifest = _load_manifest(path)
        manifest.images[entry.arch] = entry
        atomic_write_bytes(path, (manifest.model_dump_json(indent=2) + "\n").encode())


# ---------------------------------------------------------------- apptainer

def apptainer() -> str:
    exe = shutil.which("apptainer")
    if exe is None:
        raise UserError(f"apptainer is not on PATH: {GET_APPTAINER}")
    return exe


def inspect_labels(exe: str, sif: Path) -> dict[str, str]:
    out = subprocess.run([exe, "inspect", "--labels", "--json", display_path(sif)],
                         cwd=paths.project_root(), capture_output=True, text=True)
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
    .partial file, so a failed build leaves the previous image), record digest and labels."""
    definition = render_def(arch)
    exe = apptainer_or_explain(definition)
    if fakeroot is None:
        fakeroot = os.geteuid() != 0
    sif = sif_path(arch)
    partial = sif.with_name(sif.name + ".partial")
    partial.unlink(missing_ok=True)
    argv = [exe, "build", *(["--fakeroot"] if fakeroot else []), display_path(partial),
            display_path(definition)]
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
        raise UserError(f"apptainer is not on PATH, so no image was built: {GET_APPTAINER}; "
                        f"the def file is ready at {display_path(definition)}") from None


def _record(arch: str, exe: str, *, signed: bool) -> ManifestEntry:
    sif = sif_path(arch)
    found = inspect_labels(exe, sif)
    entry = ManifestEntry(
        arch=arch, image=display_path(sif), digest=image_digest(sif), size_bytes=sif.stat().st_size,
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        git_commit=found.get("org.crossfl.git-commit", ""), signed=signed, labels=found)
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


# ---------------------------------------------------------------- running the build steps here

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
