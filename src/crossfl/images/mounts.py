"""What a process inside an Apptainer container sees at a path, from the `apptainer run|exec`
options: the image's own file, or a host directory mounted over it.

Apptainer's rules, as its user docs state them (apptainer-userdocs @ 94391c5b, 2026-08-12):
- default mounts: "The user's home directory ($HOME)", "The current working directory",
  /dev, /etc/hosts, /etc/localtime, /proc, /sys, /tmp, /var/tmp (bind_paths_and_mounts.rst);
- `-B/--bind src[:dest[:opts]]`, comma-separated, repeatable; "If dest is not given, it is set
  equal to src"; also read from APPTAINER_BIND / APPTAINER_BINDPATH (same file);
- `--fakeroot`: "by default the original user's home directory is bound to /root inside the
  container" (fakeroot.rst), so $HOME's own path is not mounted;
- `--no-home` drops the home mount; `-H/--home src[:dest]` moves it; `--contain`/`--containall`
  use empty /tmp and $HOME and a minimal /dev instead of the host's.
A mount hides everything the image has at and under its destination.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SYSTEM = ("/dev", "/etc/hosts", "/etc/localtime", "/proc", "/sys", "/tmp", "/var/tmp")
BIND_ENV = ("APPTAINER_BIND", "APPTAINER_BINDPATH", "SINGULARITY_BIND", "SINGULARITY_BINDPATH")


@dataclass(frozen=True)
class Mount:
    src: str  # host path
    dst: str  # path inside the container
    why: str  # where the mount comes from (an option, a default)


def _norm(path: str) -> str:
    return posixpath.normpath(path) if path.startswith("/") else path


def _under(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


def bind_specs(value: str, why: str) -> list[Mount]:
    """`src[:dest[:opts]]` specs, comma-separated."""
    mounts = []
    for spec in (s.strip() for s in value.split(",")):
        if spec:
            parts = spec.split(":")
            src = parts[0]
            dst = parts[1] if len(parts) > 1 and parts[1] else src
            mounts.append(Mount(_norm(src), _norm(dst), why))
    return mounts


def apptainer_mounts(
    options: list[str], *, home: str, cwd: str | None = None, env: Mapping[str, str] | None = None
) -> list[Mount]:
    """The mounts of `apptainer run|exec OPTIONS IMAGE`, in the order Apptainer applies them
    (defaults first; a later mount at or over a path wins)."""
    flags = set()
    user: list[Mount] = []
    home_spec: str | None = None
    words = iter(options)
    for word in words:
        name, eq, inline = word.partition("=")
        if name in ("-B", "--bind"):
            user += bind_specs(inline if eq else next(words, ""), word if eq else name)
        elif name == "--mount":
            fields = dict(
                f.partition("=")[::2] for f in (inline if eq else next(words, "")).split(",")
            )
            src = fields.get("src") or fields.get("source", "")
            dst = fields.get("dst") or fields.get("destination") or fields.get("target") or src
            user.append(Mount(_norm(src), _norm(dst), "--mount"))
        elif name in ("-H", "--home"):
            home_spec = inline if eq else next(words, "")
        elif name in ("--fakeroot", "-f", "--no-home", "--contain", "-c", "--containall", "-C"):
            flags.add({"-f": "--fakeroot", "-c": "--contain", "-C": "--containall"}.get(name, name))
    contained = bool(flags & {"--contain", "--containall"})
    mounts: list[Mount] = []
    if not contained:
        mounts += [Mount(p, p, "default system mount") for p in DEFAULT_SYSTEM]
    if "--no-home" not in flags and not contained:
        if home_spec:
            src, _, dst = home_spec.partition(":")
            mounts.append(Mount(_norm(src), _norm(dst or src), "--home"))
        elif "--fakeroot" in flags:
            mounts.append(Mount(_norm(home), "/root", "home under --fakeroot"))
        else:
            mounts.append(Mount(_norm(home), _norm(home), "home"))
    if cwd and not contained:
        mounts.append(Mount(_norm(cwd), _norm(cwd), "current directory"))
    for var in BIND_ENV:
        if env and env.get(var):
            mounts += bind_specs(env[var], var)
    return mounts + user


def provider(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that provides `path` inside the container (the deepest destination over it);
    None: the image's own file."""
    path = _norm(path)
    over = [(len(m.dst), i, m) for i, m in enumerate(mounts) if _under(path, m.dst)]
    return max(over)[2] if over else None  # deepest, then the later one


def host_path(path: str, mounts: list[Mount]) -> str | None:
    """The host path a container path shows, or None when it is the image's."""
    mount = provider(path, mounts)
    if mount is None:
        return None
    rest = _norm(path)[len(mount.dst.rstrip("/")) :]
    return _norm(mount.src.rstrip("/") + rest) if rest else mount.src


def hides_image_path(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that hides the image's `path`, if any."""
    return provider(path, mounts)


def shows_host_path(path: str, mounts: list[Mount]) -> bool:
    """Whether the host's `path` is what the container sees at the same path."""
    return host_path(path, mounts) == _norm(path)
