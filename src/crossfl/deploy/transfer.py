"""Moving files to a login node: the rendered bundle (swapped in whole) and large files
(images, data) uploaded resumably and verified with `sha256sum` before they get their name.

An image is written to `<name>.part`; an interrupted upload resumes from the size of that
file; the remote sha256 of the finished `.part` must equal the local one before `mv` gives it
its final name. A truncated image therefore never sits under the final name.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from crossfl.deploy.remote import Remote
from crossfl.errors import UserError
from crossfl.hashing import sha256_file
from crossfl.quoting import quote

BUNDLE_DIGEST_FILE = ".crossfl-bundle.sha256"


def tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def tree_manifest(root: Path) -> str:
    """`sha256sum`-format lines for every file under root, sorted by relative path."""
    return "".join(
        f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in tree_files(root)
    )


def tree_digest(root: Path) -> str:
    return hashlib.sha256(tree_manifest(root).encode()).hexdigest()


def _progress(remote: Remote) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=remote.console,
        transient=False,
    )


# -- the bundle ---------------------------------------------------------------------------------


def upload_bundle(remote: Remote, bundle: Path, digest: str, root: str) -> bool:
    """Put the rendered bundle at `root/bundle`, replacing the old one in one `mv`.
    Returns False (and moves nothing) when the bundle there already has this digest."""
    dest = f"{root}/bundle"
    if not remote.dry_run:
        have = remote.run(f"cat {quote(dest)}/{BUNDLE_DIGEST_FILE} 2>/dev/null || true")
        if have.stdout.strip() == digest:
            remote.say(f"bundle unchanged ({digest[:12]})")
            return False
    staging = f"{root}/bundle.new"
    remote.run(f"rm -rf {quote(staging)} && mkdir -p {quote(staging)}")
    files = tree_files(bundle)
    dirs = sorted({p.parent.relative_to(bundle).as_posix() for p in files} - {"."})
    if dirs:
        remote.run("mkdir -p " + " ".join(quote(f"{staging}/{d}") for d in dirs))
    for p in files:
        rel = p.relative_to(bundle).as_posix()
        remote.transfer_note(p, f"{dest}/{rel}", p.stat().st_size)
        if not remote.dry_run:
            remote.write(f"{staging}/{rel}", p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
    remote.say(f"write {dest}/{BUNDLE_DIGEST_FILE} ({digest[:12]})")
    if not remote.dry_run:
        remote.write(f"{staging}/{BUNDLE_DIGEST_FILE}", (digest + "\n").encode())
        remote.write(f"{staging}/MANIFEST.sha256", tree_manifest(bundle).encode())
    r = remote.run(
        f"cd {quote(staging)} && sha256sum --quiet -c MANIFEST.sha256 && cd .. && "
        f"rm -rf bundle.old && {{ [ ! -e bundle ] || mv bundle bundle.old; }} && "
        f"mv bundle.new bundle && rm -rf bundle.old",
        label=f"verify the bundle with sha256sum and swap it in at {dest}",
    )
    if not r.ok:
        raise UserError(
            f"site {remote.t.site}: the bundle uploaded to {remote.t.label}:{staging} "
            f"does not verify ({r.tail()})",
            fix=f"run `crossfl deploy {remote.t.site}` again",
        )
    return True


# -- large files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    remote_path: str
    sha256: str
    size: int
    changed: bool
    resumed_from: int = 0


def remote_free(remote: Remote, directory: str) -> str:
    r = remote.run(f"df -Pk {quote(directory)} | tail -1")
    parts = r.stdout.split()
    if r.ok and len(parts) >= 4 and parts[3].isdigit():
        return f"{int(parts[3]) * 1024:,} bytes free"
    return "free space unknown"


def stage_file(
    remote: Remote, local: Path, dest: str, *, sha256: str | None = None, what: str = "file"
) -> Staged:
    """Upload `local` to `dest` on the login node, resumably and verified (see module doc)."""
    size = local.stat().st_size
    digest = sha256 or sha256_file(local)
    part = f"{dest}.part"
    site = remote.t.site
    if remote.dry_run:
        remote.transfer_note(local, part, size, ", resumable")
        remote.run(f"sha256sum {quote(part)}  # expect {digest[:12]}")
        remote.run(
            f"mv -f {quote(part)} {quote(dest)} && echo {digest} > {quote(dest + '.sha256')}"
        )
        return Staged(dest, digest, size, True)
    probe = remote.run(
        f'd={quote(dest)}; s=$(stat -c %s "$d" 2>/dev/null || echo -); '
        f'echo CROSSFL_SIZE=$s; echo CROSSFL_SHA=$(cat "$d.sha256" 2>/dev/null); '
        f'echo CROSSFL_PART=$(stat -c %s "$d.part" 2>/dev/null || echo 0)'
    ).markers()
    if probe.get("SIZE") == str(size) and probe.get("SHA", "").split(" ")[0] == digest:
        remote.say(f"{what} unchanged at {dest} ({digest[:12]})")
        return Staged(dest, digest, size, False)
    offset = int(probe.get("PART") or 0)
    if offset > size:
        offset = 0
    for attempt in (1, 2):
        _send(remote, local, part, offset, size, what)
        check = remote.run(
            f"sha256sum {quote(part)}",
            timeout=3600,
            label=f"verify {os.path.basename(part)} with sha256sum there",
        )
        got = check.stdout.split()[0] if check.ok and check.stdout.split() else ""
        if got == digest:
            break
        remote.run(f"rm -f {quote(part)}")
        if attempt == 2 or offset == 0:
            raise UserError(
                f"site {site}: {what} {local.name} arrived at {remote.t.label} with "
                f"sha256 {got[:12] or '?'} instead of {digest[:12]}; the partial file "
                f"was removed",
                fix=f"run `crossfl deploy {site}` again; if it repeats, "
                f"check the local file with sha256sum",
            )
        remote.say(f"resumed {part} did not verify; uploading it again from the start")
        offset = 0
    mv = remote.run(
        f"mv -f {quote(part)} {quote(dest)} && echo {digest} > {quote(dest + '.sha256')}"
    )
    if not mv.ok:
        raise UserError(
            f"site {site}: could not move {part} into place ({mv.tail()})",
            fix=f"check permissions of {dest.rsplit('/', 1)[0]}, then deploy again",
        )
    return Staged(dest, digest, size, True, resumed_from=offset)


def _send(remote: Remote, local: Path, part: str, offset: int, size: int, what: str) -> None:
    extra = f", resuming at byte {offset:,}" if offset else ""
    remote.transfer_note(local, part, size, extra)
    try:
        with local.open("rb") as src, _progress(remote) as bar:
            task = bar.add_task(f"{what} {local.name}", total=size, completed=offset)
            src.seek(offset)
            remote.append(src, part, offset, lambda n: bar.advance(task, n))
        # Pipelined SFTP writes report a refused write late or not at all (paramiko keeps the
        # status of an acknowledged-later write to itself): the size on the server decides.
        landed = _remote_size(remote, part)
        if landed != size:
            raise OSError(f"only {landed:,} of {size:,} bytes were written")
    except OSError as exc:
        directory = part.rsplit("/", 1)[0]
        reason = exc.strerror or str(exc) or type(exc).__name__
        free = remote_free(remote, directory)
        kept = _remote_size(remote, part)
        raise UserError(
            f"site {remote.t.site}: upload of {what} {local.name} to "
            f"{remote.t.label}:{directory} failed after {kept:,} of "
            f"{size:,} bytes: remote write error '{reason}' ({free}; disk quota or "
            f"space?); the partial file {os.path.basename(part)} is kept and the "
            f"next deploy resumes it",
            fix=f"free space or raise the quota there (or move deploy.remote_root), "
            f"then run `crossfl deploy {remote.t.site}` again",
        ) from None


def _remote_size(remote: Remote, path: str) -> int:
    out = remote.run(f"stat -c %s {quote(path)} 2>/dev/null || echo 0").stdout.strip()
    return int(out) if out.isdigit() else 0


def stage_tree(remote: Remote, local: Path, dest: str, what: str = "data") -> tuple[bool, str, int]:
    """Upload a file or directory to `dest` (files go through `stage_file`).
    Returns (changed, digest, total bytes)."""
    files = [local] if local.is_file() else tree_files(local)
    if not files:
        raise UserError(
            f"nothing to upload under {local}",
            field="--data",
            fix="give a file or a non-empty directory",
        )
    if local.is_file():
        targets = [(local, dest, local.name)]
    else:
        targets = [
            (p, f"{dest}/{p.relative_to(local).as_posix()}", p.relative_to(local).as_posix())
            for p in files
        ]
    dirs = sorted({t.rsplit("/", 1)[0] for _, t, _ in targets})
    remote.run("mkdir -p " + " ".join(quote(d) for d in dirs))
    changed = False
    lines = []
    total = 0
    for p, target, rel in targets:
        staged = stage_file(remote, p, target, what=what)
        changed |= staged.changed
        total += staged.size
        lines.append(f"{staged.sha256}  {rel}\n")
    return changed, hashlib.sha256("".join(lines).encode()).hexdigest(), total
