"""An arch's root filesystem built on this machine the way `apptainer build --sandbox` builds
it, and run the way `apptainer run|test` runs it, with mmdebstrap and bubblewrap standing in for
Apptainer (which has no package here). Only for `Bootstrap: debootstrap` arches (cpu-debian).

Build, following Apptainer's own code (apptainer/apptainer, internal/pkg/build/):
1. the bootstrap: Apptainer runs `debootstrap --variant=minbase --include=apt,<Include> <OSVersion>
   <rootfs> <MirrorURL>` (sources/conveyorPacker_debootstrap.go); here mmdebstrap with the same
   variant, packages, release and mirror (its minbase has none of the packages Apptainer
   excludes);
2. %files copied as `cp -fLr`; 3. %post run as `/bin/sh -ex /.post.script` in the writable
   rootfs, with a clean environment and the host's resolv.conf and hosts (stage.go,
   runPostScript: `--cleanenv`, `-B resolv.conf`, `-B hosts`);
4. /.singularity.d/env/90-environment.sh, runscript and test written as "#!/bin/sh\\n\\n" + the
   section (insertEnvScript, insertRunScript, insertTestScript), and the actions `run` and
   `test` that source env/*.sh in order and exec the runscript or test (sources/run.sh, test.sh).

Run: the rootfs read-only (as a SIF is), Apptainer's default mounts (crossfl.images.mounts:
/dev, /proc, /sys, /tmp, /var/tmp, /etc/hosts, $HOME) plus the caller's binds, LD_LIBRARY_PATH
not taken from the host and PATH reset (as Apptainer does), then /.singularity.d/actions/*.

The built rootfs is cached under build/images/rootfs/, keyed by the def file's text (with its
build arguments applied) and the content of what %files copies in; the bootstrap is cached
apart, keyed by its command, so a new commit re-runs only %files and %post.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images.definition import render_def
from crossfl.images.defparse import Stage, apply_build_args, files, parse_def
from crossfl.images.layout import images_dir

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GET_TOOLS = "apt-get install mmdebstrap bubblewrap (as root)"
SINGULARITY_D = ".singularity.d"
ACTION = """#!/bin/sh
# As Apptainer's action script: the image's environment scripts in order, then the {what}.
for script in $(ls /.singularity.d/env/*.sh | sort -n); do
    if [ -f "$script" ]; then
        . "$script"
    fi
done
exec /.singularity.d/{what} "$@"
"""


@dataclass
class Rootfs:
    arch: str
    path: Path
    key: str
    cached: bool
    seconds: dict[str, float] = field(default_factory=dict)


def require_tools() -> None:
    missing = [tool for tool in ("mmdebstrap", "bwrap") if shutil.which(tool) is None]
    if missing:
        raise UserError(
            f"{' and '.join(missing)} not on PATH: the image check builds the root "
            f"filesystem with mmdebstrap and runs it with bubblewrap",
            fix=GET_TOOLS,
        )


def cache_dir() -> Path:
    return images_dir() / "rootfs"


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    items = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for item in items:
        h.update(str(item.relative_to(root.parent)).encode() + b"\0" + item.read_bytes())
    return h.hexdigest()


def _run(
    argv: list[str],
    log: Path,
    what: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[float, str]:
    start = time.monotonic()
    done = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    seconds = time.monotonic() - start
    with log.open("a") as handle:
        handle.write(
            f"==== {what} ({seconds:.1f} s, exit {done.returncode})\n$ "
            f"{' '.join(argv)}\n{done.stdout}\n"
        )
    if done.returncode != 0:
        tail = " | ".join(done.stdout.strip().splitlines()[-3:])
        raise UserError(f"{what} failed with exit {done.returncode}: {tail}", file=log)
    return seconds, done.stdout


def bootstrap_argv(stage: Stage, target: Path) -> list[str]:
    """mmdebstrap in the place of Apptainer's `debootstrap --variant=minbase --include=apt,...`."""
    header = stage.header
    include = ",".join(["apt", *header.get("include", "").split()])
    return [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={include}",
        header["osversion"],
        str(target),
        header["mirrorurl"],
    ]


def _bootstrap(stage: Stage, log: Path) -> tuple[Path, float, bool]:
    key = _digest(*bootstrap_argv(stage, Path("ROOTFS")))
    done = cache_dir() / f"bootstrap-{key}"
    if (done / "rootfs" / "usr").is_dir():
        return done / "rootfs", 0.0, True
    partial = cache_dir() / f".bootstrap-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    seconds, _ = _run(bootstrap_argv(stage, partial / "rootfs"), log, "bootstrap (mmdebstrap)")
    shutil.rmtree(done, ignore_errors=True)
    os.replace(partial, done)
    return done / "rootfs", seconds, False


def _copy_like_cp_r(src: Path, dst: Path) -> None:
    """What Apptainer's %files does (`cp -fLr SRC DST`, parents created)."""
    if dst.is_dir():
        dst = dst / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=False, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def bwrap_build(rootfs: Path, ro_binds: list[str]) -> list[str]:
    """bubblewrap as Apptainer runs %post: writable rootfs, clean environment, host DNS."""
    argv = [
        "bwrap",
        "--bind",
        str(rootfs),
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        "--ro-bind",
        "/etc/resolv.conf",
        "/etc/resolv.conf",
        "--ro-bind",
        "/etc/hosts",
        "/etc/hosts",
    ]
    for path in ro_binds:
        argv += ["--ro-bind", path, path]
    return argv + [
        "--chdir",
        "/",
        "--clearenv",
        "--setenv",
        "PATH",
        DEFAULT_PATH,
        "--setenv",
        "HOME",
        "/root",
        "--setenv",
        "LANG",
        "C",
        "--die-with-parent",
    ]


def bwrap_run(rootfs: Path, binds: list[str], *, home: str | None = None) -> list[str]:
    """bubblewrap as `apptainer run IMAGE` mounts: read-only image, Apptainer's default mounts,
    then `binds` (each at its own path); LD_LIBRARY_PATH and PATH as Apptainer sets them."""
    home = home or os.path.expanduser("~")
    argv = [
        "bwrap",
        "--ro-bind",
        str(rootfs),
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--ro-bind",
        "/sys",
        "/sys",
        "--bind",
        "/tmp",
        "/tmp",
        "--bind",
        "/var/tmp",
        "/var/tmp",
        "--ro-bind",
        "/etc/hosts",
        "/etc/hosts",
        "--ro-bind",
        "/etc/resolv.conf",
        "/etc/resolv.conf",
    ]
    for path in ([home] if home not in ("", "/") else []) + binds:
        argv += ["--bind", path, path]
    return argv + [
        "--unsetenv",
        "LD_LIBRARY_PATH",
        "--setenv",
        "PATH",
        DEFAULT_PATH,
        "--die-with-parent",
    ]


def mount_points(rootfs: Path, paths_: list[str]) -> None:
    """Create the bind destinations in the rootfs (Apptainer's underlay does this at run time;
    bubblewrap cannot create them in a read-only root)."""
    for path in paths_:
        (rootfs / path.lstrip("/")).mkdir(parents=True, exist_ok=True)


def _write(path: Path, text: str, mode: int = 0o775) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _singularity_files(rootfs: Path, stage: Stage) -> None:
    meta = rootfs / SINGULARITY_D
    for section, target in (
        ("environment", "env/90-environment.sh"),
        ("runscript", "runscript"),
        ("test", "test"),
    ):
        _write(meta / target, "#!/bin/sh\n\n" + stage.sections[section].body + "\n")
    for action, what in (("run", "runscript"), ("test", "test")):
        _write(meta / "actions" / action, ACTION.format(what=what), 0o755)


def build_rootfs(
    arch: str,
    build_args: dict[str, str],
    log: Path,
    ro_binds: list[str] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Rootfs:
    """The arch's rootfs under build/images/rootfs/ARCH-KEY/rootfs, built unless cached;
    ``progress`` hears of each step as it starts."""
    require_tools()
    definition = render_def(arch)
    text = apply_build_args(definition.read_text(), build_args)
    stage = parse_def(text).only_stage()
    if stage.header.get("bootstrap") != "debootstrap":
        raise UserError(
            f"{arch} bootstraps from {stage.header.get('bootstrap')}: only a "
            "debootstrap arch builds here (its base image cannot be pulled)",
            field="ARCH",
            fix="use cpu-debian",
        )
    root = paths.project_root()
    sources = [(root / src, dst) for src, dst in files(stage)]
    key = _digest(text, *(_tree_digest(src) for src, _ in sources))
    final = cache_dir() / f"{arch}-{key}"
    if (final / "built.json").is_file():
        progress("root filesystem: cached, reused")
        return Rootfs(
            arch,
            final / "rootfs",
            key,
            True,
            json.loads((final / "built.json").read_text())["seconds"],
        )
    log.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    progress("root filesystem: Debian packages (mmdebstrap; minutes when uncached)")
    base, seconds["bootstrap"], _ = _bootstrap(stage, log)
    progress("root filesystem: %files")
    partial = cache_dir() / f".{arch}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rootfs = partial / "rootfs"
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)], check=True)
    start = time.monotonic()
    for src, dst in sources:
        _copy_like_cp_r(src, rootfs / dst.lstrip("/"))
    seconds["files"] = time.monotonic() - start
    (rootfs / ".post.script").write_text(stage.sections["post"].body)
    progress("root filesystem: %post (the image's Python stack; minutes)")
    seconds["post"], _ = _run(
        [*bwrap_build(rootfs, ro_binds or []), "/bin/sh", "-ex", "/.post.script"], log, "%post"
    )
    (rootfs / ".post.script").unlink()
    for path in ro_binds or []:  # the empty mount points bubblewrap left
        with_parents = rootfs / path.lstrip("/")
        while with_parents != rootfs and with_parents.is_dir() and not any(with_parents.iterdir()):
            with_parents.rmdir()
            with_parents = with_parents.parent
    _singularity_files(rootfs, stage)
    (partial / "built.json").write_text(json.dumps({"arch": arch, "key": key, "seconds": seconds}))
    for old in cache_dir().glob(f"{arch}-*"):  # one built rootfs per arch is kept
        shutil.rmtree(old, ignore_errors=True)
    os.replace(partial, final)
    return Rootfs(arch, final / "rootfs", key, False, seconds)


def run_action(
    rootfs: Rootfs, action: str, args: list[str], log: Path, binds: list[str] | None = None
) -> tuple[float, str]:
    """`apptainer ACTION IMAGE ARGS` (run, test) in the rootfs, with a clean environment."""
    mount_points(rootfs.path, binds or [])
    argv = [*bwrap_run(rootfs.path, binds or []), f"/{SINGULARITY_D}/actions/{action}", *args]
    env = {"HOME": os.path.expanduser("~"), "LANG": "C", "PATH": DEFAULT_PATH}
    return _run(argv, log, f"apptainer {action} (bubblewrap)", env=env)
