"""The `image` step of `crossfl deploy`: the site's image put where its catalog entry says
(`container.images`, on the project filesystem), from `container.image_source.method`:

  upload  build/images/crossfl-ARCH.sif of this checkout, resumable and sha256-verified
          (transfer.stage_file);
  pull    `apptainer pull` on the login node of a registry reference pinned by digest
          (oras://...@sha256:... for a SIF, docker://...@sha256:...);
  build   the def file and its context (crossfl.images.render_def) uploaded as one verified
          tar file, then the rendered batch/build_image.sh run on the login node, or
          submitted as a batch job where the facility builds on compute nodes
          (container.build.on_compute_node) and waited for with the scheduler's own query.

A pulled or built image is checked before it is recorded: `apptainer inspect --labels --json`
there must show the Python minor and the pins that must agree with the login node (parsl,
dill, globus-compute-endpoint, globus-compute-sdk: requirements/constraints.txt) and, for a
build, this checkout's git commit. Its sha256 is taken there, and `<image>.sha256` and
`<image>.origin` (what it was placed from) are written beside it and into the state file;
the next deploy compares `<image>.origin` with what it would place and skips an unchanged
image. A build still running when deploy stops waiting is recorded (`image_build`), and the
next deploy waits for it instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from crossfl.deploy import jobs
from crossfl.deploy.transfer import stage_file, tree_manifest
from crossfl.errors import UserError
from crossfl.images import MUST_AGREE, def_path, git_commit, python_minor, read_constraints
from crossfl.quoting import quote
from crossfl.state import BuildJob, ImageState, now

if TYPE_CHECKING:
    from crossfl.deploy.deployment import Deployment
    from crossfl.sites import Site

LABEL_COMMIT = "org.crossfl.git-commit"
LABEL_PYTHON = "org.crossfl.python"
LABEL_PIN = "org.crossfl.pin."


def image_env(site: Site) -> str:
    """Shell lines before an `apptainer` command on the login node: the facility's build
    modules (container.build), which put apptainer on PATH where it is a module."""
    build = site.container.build
    if build is None:
        return ""
    lines = [f"module use {quote(u)}" for u in build.module_use]
    lines += [f"module load {quote(m)}" for m in build.modules]
    return "".join(line + "\n" for line in lines)


def expected_labels(*, commit: str | None = None) -> dict[str, str]:
    """The labels an image must carry to run under this checkout's login-node stack."""
    pins = read_constraints()
    want = {LABEL_PYTHON: python_minor()}
    want.update({LABEL_PIN + name: pins[name] for name in MUST_AGREE if name in pins})
    if commit:
        want[LABEL_COMMIT] = commit
    return want


def label_mismatches(labels: dict[str, str], want: dict[str, str]) -> list[str]:
    return [
        f"{k.removeprefix('org.crossfl.').removeprefix('pin.')} "
        f"{labels.get(k, 'missing')} (want {v})"
        for k, v in want.items()
        if labels.get(k) != v
    ]


def parse_inspect(text: str) -> dict[str, str] | None:
    """Labels from `apptainer inspect --labels --json` (`data.attributes.labels`)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found = data.get("data", {}).get("attributes", {}).get("labels", data)
    return {str(k): str(v) for k, v in (found or {}).items()}


def inspect(d: Deployment, path: str) -> dict[str, str]:
    res = d.remote.run(
        f"{image_env(d.site)}apptainer inspect --labels --json {quote(path)}",
        label=f"read the labels of {path} (apptainer inspect)",
    )
    if d.dry_run:
        return {}
    labels = parse_inspect(res.stdout) if res.ok else None
    if labels is None:
        raise UserError(
            f"site {d.site.name}: `apptainer inspect --labels --json {path}` "
            f"failed on {d.target.label}: {res.tail()}",
            fix="check the image there (`apptainer inspect` it by hand)",
        )
    return labels


# -- the step -----------------------------------------------------------------------------------


def place(d: Deployment) -> None:
    site = d.site
    raw = site.image()
    if raw is None:
        return
    dest = d.info.resolve(raw, site.deploy.remote_root)
    src = site.container.image_source
    if site.container.runtime != "apptainer":  # podman-hpc: crossfl.deploy.podman
        raise UserError(
            f"site {site.name} runs {site.container.runtime} images; `crossfl "
            f"deploy` places Apptainer and podman-hpc images",
            field="container.runtime",
            fix=f"put the image in place there by hand ({raw}), or use "
            "container.runtime: apptainer or podman-hpc",
        )
    d.remote.run(f"mkdir -p {quote(dest.rsplit('/', 1)[0])}")
    if src.method == "upload":
        _upload(d, dest)
    elif src.method == "pull":
        _pull(d, dest, src.ref or "")
    else:
        _build(d, dest)


def _there(d: Deployment, dest: str) -> dict[str, str]:
    """What sits at `dest`: SIZE, SHA (`.sha256`), ORIGIN (`.origin`)."""
    return d.remote.run(
        f'p={quote(dest)}; [ -f "$p" ] && echo CROSSFL_SIZE=$(stat -c %s "$p"); '
        f'echo CROSSFL_SHA=$(cat "$p.sha256" 2>/dev/null); '
        f'echo CROSSFL_ORIGIN=$(cat "$p.origin" 2>/dev/null); true'
    ).markers()


def _unchanged(d: Deployment, dest: str, origin: str, source: str) -> bool:
    """True (and the state up to date) when `dest` holds what `origin` names."""
    if d.dry_run:
        return False
    have = _there(d, dest)
    sha = have.get("SHA", "").split(" ")[0]
    if have.get("ORIGIN") != origin or not have.get("SIZE") or not sha:
        return False
    prev = d.state.image
    if prev and prev.origin == origin and prev.remote_path == dest and prev.sha256 == sha:
        d.remote.say(f"image unchanged at {dest} ({origin.split('@')[-1][:19]})")
        return True
    if prev and prev.remote_path == dest and prev.sha256 != sha:
        return False  # replaced there since it was recorded: place it again
    labels = inspect(d, dest)  # in place, but not (or differently) recorded here
    d.state.image = ImageState(
        arch=d.site.arch,
        source=source,
        origin=origin,
        remote_path=dest,
        sha256=sha,
        size=int(have["SIZE"]),
        labels=labels,
        staged_at=now(),
    )
    d.remote.say(f"image already in place at {dest} (recorded now)")
    return True


def _record(
    d: Deployment, path: str, dest: str, origin: str, source: str, labels: dict[str, str]
) -> None:
    """sha256 of the verified image at `path`, moved to `dest` with its sidecar files."""
    res = d.remote.run(
        f"sha256sum {quote(path)}", timeout=3600, label=f"sha256 of the image there ({path})"
    )
    sha = res.stdout.split()[0] if res.ok and res.stdout.split() else ""
    if not d.dry_run and len(sha) != 64:
        raise UserError(
            f"site {d.site.name}: sha256sum of {path} failed: {res.tail()}",
            fix="check the image there, then deploy again",
        )
    move = f"mv -f {quote(path)} {quote(dest)} && " if path != dest else ""
    res = d.remote.run(
        f"{move}echo {sha or '<sha256>'} > {quote(dest + '.sha256')} && "
        f"printf '%s\\n' {quote(origin)} > {quote(dest + '.origin')} && "
        f"stat -c %s {quote(dest)}"
    )
    if d.dry_run:
        return
    if not res.ok:
        raise UserError(
            f"site {d.site.name}: could not put the image in place at {dest}: {res.tail()}",
            fix="check permissions there, then deploy again",
        )
    d.state.image = ImageState(
        arch=d.site.arch,
        source=source,
        origin=origin,
        remote_path=dest,
        sha256=sha,
        size=int(res.stdout.split()[-1]),
        labels=labels,
        staged_at=now(),
    )
    d.out.changed.append(f"image ({source})")


def _check_labels(
    d: Deployment, path: str, labels: dict[str, str], what: str, commit: str | None
) -> None:
    if d.dry_run:
        return
    bad = label_mismatches(labels, expected_labels(commit=commit))
    if bad:
        d.remote.run(f"mv -f {quote(path)} {quote(path + '.rejected')}")
        raise UserError(
            f"site {d.site.name}: the {what} image does not match this checkout: "
            f"{'; '.join(bad)}; it was moved aside to {path}.rejected",
            fix="pull or build an image of this checkout's pins "
            "(requirements/constraints.txt), then deploy again",
        )


# -- upload ---------------------------------------------------------------------------------------


def _upload(d: Deployment, dest: str) -> None:
    local = d.image
    if local is None:  # deployment() checked that the file exists
        raise UserError(f"site {d.site.name}: no local image to upload")
    staged = stage_file(
        d.remote, local, dest, sha256=_known_sha(d.state.image, local), what="image"
    )
    d.remote.run(
        f"printf '%s\\n' {quote('upload sha256:' + staged.sha256)} > {quote(dest + '.origin')}"
    )
    if staged.changed:
        d.out.changed.append("image")
    d.state.image = ImageState(
        arch=d.site.arch,
        source="upload",
        local_path=str(local),
        remote_path=staged.remote_path,
        sha256=staged.sha256,
        size=staged.size,
        staged_at=now(),
        local_mtime_ns=local.stat().st_mtime_ns,
    )


def _known_sha(prev: ImageState | None, image: Path) -> str | None:
    """The recorded sha256 of the local image if the file is the one staged last time."""
    st = image.stat()
    if (
        prev
        and prev.local_path == str(image)
        and prev.size == st.st_size
        and prev.local_mtime_ns == st.st_mtime_ns
    ):
        return prev.sha256
    return None


# -- pull -----------------------------------------------------------------------------------------


def _pull(d: Deployment, dest: str, ref: str) -> None:
    origin = f"pull {ref}"
    if _unchanged(d, dest, origin, "pull"):
        return
    part = dest + ".part"
    # --disable-cache: no copy in ~/.apptainer/cache (home quotas), and no stale cached ORAS
    # blob (OLCF: "try passing the flag --disable-cache", containers_on_frontier.html)
    res = d.remote.run(
        f"{image_env(d.site)}rm -f {quote(part)} && "
        f"apptainer pull --disable-cache {quote(part)} {quote(ref)}",
        timeout=4 * 3600,
        label=f"apptainer pull {ref} (on {d.target.label})",
    )
    if not d.dry_run and not res.ok:
        d.remote.run(f"rm -f {quote(part)}")
        raise UserError(
            f"site {d.site.name}: `apptainer pull {ref}` failed on {d.target.label}: {res.tail(2)}",
            fix="check the reference and that the login node reaches the registry "
            "(`apptainer registry login` for a private one), then deploy again",
        )
    labels = inspect(d, part)
    _check_labels(d, part, labels, "pulled", commit=None)
    here = git_commit() if not d.dry_run else ""
    if labels.get(LABEL_COMMIT) and labels[LABEL_COMMIT] != here:
        d.remote.say(
            f"note: the pulled image was built from commit "
            f"{labels[LABEL_COMMIT][:12]}, this checkout is {here[:12]} (pins agree)"
        )
    _record(d, part, dest, origin, "pull", labels)


# -- build ----------------------------------------------------------------------------------------


def build_inputs(arch: str) -> tuple[Path, str]:
    """Render the def file and its context here; pack both into one tar file for the site.
    Returns (tar file, build key). The key is the sha256 of the def file without its
    git-commit label and of the context's manifest: what the image is made of, so a commit
    that changes neither (docs, tests) does not rebuild a 10-20 GB image."""
    from crossfl.images import render_def

    definition = render_def(arch)
    context = definition.with_suffix(".context")
    recipe = "".join(
        line
        for line in definition.read_text().splitlines(keepends=True)
        if LABEL_COMMIT not in line
    )
    key = hashlib.sha256(recipe.encode() + tree_manifest(context).encode()).hexdigest()
    tar = definition.with_suffix(".build.tar")
    with tarfile.open(tar, "w") as out:
        for path in [definition, *sorted(p for p in context.rglob("*") if p.is_file())]:
            info = out.gettarinfo(str(path), arcname=str(path.relative_to(definition.parent)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as fh:
                out.addfile(info, fh)
    return tar, key


def _build(d: Deployment, dest: str) -> None:
    site, remote = d.site, d.remote
    tar, key = build_inputs(site.arch)
    origin = f"build {key}"
    if _unchanged(d, dest, origin, "build"):
        d.state.image_build = None
        return
    sched = site.sched
    pending = d.state.image_build
    if pending is not None and pending.key != key and not d.dry_run:
        st = jobs.status(remote, sched, pending_job(pending))
        if not st.done:
            raise UserError(
                f"site {site.name}: an image build of another version is still running "
                f"({pending.where} job {pending.job_id}, {st.state}); its output: "
                f"{pending.output}",
                fix=f"wait for it, or stop it (`{sched.cancel or 'kill'} "
                f"{pending.job_id}` there), then deploy again",
            )
        pending = None
    if pending is not None and not d.dry_run:
        remote.say(f"waiting for the image build started earlier ({pending.job_id})")
        job = pending_job(pending)
    else:
        job = _start_build(d, tar, key)
    st = jobs.wait(remote, sched, job, timeout_s=d.build_wait_s, what="image build")
    if not st.done:
        raise UserError(
            f"site {site.name}: the image build ({job.where} job {job.job_id}) is "
            f"still {st.state} after {d.build_wait_s / 60:.0f} min; it keeps "
            f"running, and its output goes to {job.output}",
            fix=f"run `crossfl deploy {site.name}` again later: it waits for "
            "this build instead of starting another",
        )
    d.state.image_build = None
    if not st.ok:
        raise UserError(
            f"site {site.name}: the image build ({job.where} job {job.job_id}) "
            f"ended {st.state} ({st.detail}): {jobs.output_tail(remote, job, 3)}",
            fix=f"read {job.output} there, fix the cause, then deploy again",
        )
    if not d.dry_run and not _there(d, dest).get("SIZE"):
        raise UserError(
            f"site {site.name}: the image build ended but left no image at {dest}: "
            f"{jobs.output_tail(remote, job, 3)}",
            fix=f"read {job.output} there, then deploy again",
        )
    labels = inspect(d, dest)
    _check_labels(d, dest, labels, "built", commit=None if d.dry_run else git_commit())
    _record(d, dest, dest, origin, "build", labels)


def pending_job(pending: BuildJob) -> jobs.Job:
    """The build job a deploy started earlier, as recorded in state."""
    return jobs.Job(pending.where, pending.job_id, pending.output, pending.host)


def record_build(d: Deployment, job: jobs.Job, key: str) -> None:
    """The started build in state (not in a dry run), so a later deploy waits for it
    instead of starting another (Apptainer and podman-hpc builds alike)."""
    if d.remote.dry_run:
        return
    d.state.image_build = BuildJob(
        where=job.where,
        job_id=job.job_id,
        host=job.host,
        key=key,
        output=job.output,
        started_at=now(),
    )
    d.record()


def _start_build(d: Deployment, tar: Path, key: str) -> jobs.Job:
    site, remote, root = d.site, d.remote, d.info.root
    where = f"{root}/build/images"
    remote.run(f"mkdir -p {quote(where)}")
    staged = stage_file(remote, tar, f"{where}/{tar.name}", what="image build inputs")
    context = def_path(site.arch).with_suffix(".context").name
    res = remote.run(
        f"cd {quote(where)} && rm -rf {quote(context)} && tar -xf {quote(tar.name)}",
        label=f"unpack the def file and its context in {where}",
    )
    if not remote.dry_run and not res.ok:
        raise UserError(
            f"site {site.name}: unpacking {staged.remote_path} failed: {res.tail()}",
            fix="check space and permissions there, then deploy again",
        )
    script = f"{root}/bundle/batch/build_image.sh"
    build = site.container.build
    name = f"crossfl-build-{site.name}"
    if build is not None and build.on_compute_node:
        job = jobs.submit(remote, site.sched, script, where, name, "image build")
    else:
        job = jobs.start_login(remote, script, where, name, "image build")
    record_build(d, job, key)
    return job
