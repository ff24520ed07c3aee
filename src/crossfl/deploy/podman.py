"""The `image` step for podman-hpc (NERSC Perlmutter): build at the facility, or pull by digest;
in both cases the image ends up migrated (squashed into $SCRATCH/storage, which compute nodes
read) and is pinned by its image ID from then on.

  build  the Containerfile and its context (crossfl.images.render_containerfile) packed into one
         tar file, uploaded and verified, unpacked in REMOTE_ROOT/build/oci (the build's whole
         context), then the rendered batch/build_image.sh run on the login node with the tag
         NAME:<build key>: `podman-hpc build`, `podman-hpc migrate`; its labels checked (Python
         minor, the shared pins, this checkout's commit);
  pull   `podman-hpc pull` of a reference pinned by digest (pull migrates it too).

`podman-hpc image inspect` gives the image's ID, manifest digest, size and labels; the ID is
recorded as the image's sha256 (deploy/state/SITE.json, and from there a run's
site_images.json) and is what the endpoint's `container_uri` and the ranks' `shared-run` name
once deploy has placed it (crossfl.sites.with_deployed_image): a tag can be moved, an ID cannot.
An upload is refused: a podman-hpc image is not a file to copy.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crossfl.deploy import jobs
from crossfl.deploy.image import (
    LABEL_COMMIT,
    expected_labels,
    label_mismatches,
    pending_job,
    record_build,
)
from crossfl.deploy.transfer import stage_file, tree_manifest
from crossfl.errors import UserError
from crossfl.images import git_commit
from crossfl.quoting import quote
from crossfl.render.batch import OCI_CONTEXT
from crossfl.state import ImageState, now

if TYPE_CHECKING:
    from crossfl.deploy.deployment import Deployment

PODMAN = "podman-hpc"


def refuse_upload(site_name: str, runtime: str, method: str) -> None:
    if runtime == PODMAN and method == "upload":
        raise UserError(
            f"site {site_name} runs podman-hpc images, which are built at the facility or "
            "pulled by digest, not uploaded",
            field="container.image_source.method",
            fix="set container.image_source.method: build (the default of perlmutter), or "
            "pull with ref: docker://HOST/REPO@sha256:<digest>",
        )


def parse_inspect(text: str) -> dict[str, Any] | None:
    """`podman image inspect` JSON (a list of one image): Id, Digest, Size, Labels."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, list):
        data = data[0] if data else None
    if not isinstance(data, dict) or not data.get("Id"):
        return None
    labels = data.get("Labels") or (data.get("Config") or {}).get("Labels") or {}
    return {
        "id": str(data["Id"]).removeprefix("sha256:"),
        "digest": data.get("Digest"),
        "size": int(data.get("Size") or 0),
        "labels": {str(k): str(v) for k, v in labels.items()},
    }


def inspect(d: Deployment, ref: str, *, quiet: bool = False) -> dict[str, Any] | None:
    res = d.remote.run(
        f"{PODMAN} image inspect {quote(ref)} 2>&1",
        label=None if quiet else f"read the image {ref} ({PODMAN} image inspect)",
    )
    if d.dry_run:
        return {"id": "<image id>", "digest": None, "size": 0, "labels": {}}
    return parse_inspect(res.stdout) if res.ok else None


def place(d: Deployment) -> None:
    site = d.site
    src = site.container.image_source
    refuse_upload(site.name, site.container.runtime, src.method)
    if src.method == "pull":
        _pull(d, src.ref or "")
    else:
        _build(d)


def _unchanged(d: Deployment, origin: str) -> bool:
    prev = d.state.image
    if d.dry_run or prev is None or prev.origin != origin:
        return False
    found = inspect(d, prev.sha256, quiet=True)
    if found is None or found["id"] != prev.sha256:
        return False  # removed from podman-hpc's stores since: place it again
    d.remote.say(f"image unchanged: {prev.remote_path} (ID {prev.sha256[:12]})")
    return True


def _record(
    d: Deployment,
    name: str,
    found: dict[str, Any],
    origin: str,
    source: Literal["build", "pull"],
    commit: str | None,
) -> None:
    if d.dry_run:
        return
    bad = label_mismatches(found["labels"], expected_labels(commit=commit))
    if bad:
        d.remote.run(f"{PODMAN} rmi {quote(name)} 2>&1; true")
        raise UserError(
            f"site {d.site.name}: the {source} image {name} does not match this checkout: "
            f"{'; '.join(bad)}; its tag was removed",
            fix="pull or build an image of this checkout's pins "
            "(requirements/constraints.txt), then deploy again",
        )
    d.state.image = ImageState(
        arch=d.site.arch,
        source=source,
        origin=origin,
        remote_path=name,
        sha256=found["id"],
        digest=found["digest"],
        size=found["size"],
        labels=found["labels"],
        staged_at=now(),
    )
    d.out.changed.append(f"image ({source})")


def _pull(d: Deployment, ref: str) -> None:
    origin = f"pull {ref}"
    if _unchanged(d, origin):
        return
    name = ref.removeprefix("docker://")
    res = d.remote.run(
        f"{PODMAN} pull {quote(name)} 2>&1",
        timeout=4 * 3600,
        label=f"{PODMAN} pull {name} (on {d.target.label}; it migrates the image)",
    )
    if not d.dry_run and not res.ok:
        raise UserError(
            f"site {d.site.name}: `{PODMAN} pull {name}` failed on {d.target.label}: {res.tail(2)}",
            fix="check the reference and that the login node reaches the registry "
            f"(`{PODMAN} login` for a private one), then deploy again",
        )
    found = inspect(d, name)
    if found is None:
        raise UserError(f"site {d.site.name}: {PODMAN} pulled {name} but cannot inspect it")
    _record(d, name, found, origin, "pull", commit=None)


# -- build ----------------------------------------------------------------------------------------


def build_inputs(arch: str) -> tuple[Path, str]:
    """The Containerfile and its context in one tar file (arcnames from the project root, as its
    COPY paths are), and the build key: the Containerfile without its commit label and the
    context's manifest."""
    from crossfl.images import render_containerfile

    containerfile = render_containerfile(arch)
    context = containerfile.with_suffix(".context")
    recipe = "".join(
        line
        for line in containerfile.read_text().splitlines(keepends=True)
        if LABEL_COMMIT not in line
    )
    key = hashlib.sha256(recipe.encode() + tree_manifest(context).encode()).hexdigest()
    root = containerfile.parents[2]  # the project root: build/images/<file>
    tar = containerfile.with_suffix(".oci.tar")
    with tarfile.open(tar, "w") as out:
        for path in [containerfile, *sorted(p for p in context.rglob("*") if p.is_file())]:
            info = out.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as fh:
                out.addfile(info, fh)
    return tar, key


def _build(d: Deployment) -> None:
    site, remote = d.site, d.remote
    tar, key = build_inputs(site.arch)
    origin = f"build {key}"
    if _unchanged(d, origin):
        d.state.image_build = None
        return
    name = f"{site.container.images[site.arch]}:{key[:12]}"
    pending = d.state.image_build
    if pending is not None and pending.key == key and not d.dry_run:
        remote.say(f"waiting for the image build started earlier ({pending.job_id})")
        job = pending_job(pending)
    else:
        job = _start(d, tar, key, name)
    st = jobs.wait(remote, site.sched, job, timeout_s=d.build_wait_s, what="image build")
    if not st.done:
        raise UserError(
            f"site {site.name}: the image build (process {job.job_id} on {job.host}) is still "
            f"{st.state} after {d.build_wait_s / 60:.0f} min; its output goes to {job.output}",
            fix=f"run `crossfl deploy {site.name}` again later: it waits for this build",
        )
    d.state.image_build = None
    if not st.ok:
        raise UserError(
            f"site {site.name}: the image build ended {st.state} ({st.detail}): "
            f"{jobs.output_tail(remote, job, 3)}",
            fix=f"read {job.output} there, fix the cause, then deploy again",
        )
    found = inspect(d, name)
    if found is None:
        raise UserError(
            f"site {site.name}: the image build ended but {PODMAN} has no {name}: "
            f"{jobs.output_tail(remote, job, 3)}",
            fix=f"read {job.output} there, then deploy again",
        )
    _record(d, name, found, origin, "build", commit=None if d.dry_run else git_commit())


def _start(d: Deployment, tar: Path, key: str, name: str) -> jobs.Job:
    site, remote, root = d.site, d.remote, d.info.root
    where = f"{root}/{OCI_CONTEXT}"
    remote.run(f"rm -rf {quote(where)} && mkdir -p {quote(where)}")
    staged = stage_file(remote, tar, f"{where}/{tar.name}", what="image build inputs")
    res = remote.run(
        f"cd {quote(where)} && tar -xf {quote(tar.name)} && rm -f {quote(tar.name)}",
        label=f"unpack the Containerfile and its context in {where}",
    )
    if not remote.dry_run and not res.ok:
        raise UserError(
            f"site {site.name}: unpacking {staged.remote_path} failed: {res.tail()}",
            fix="check space and permissions there, then deploy again",
        )
    job = jobs.start_login(
        remote,
        f"{root}/bundle/batch/build_image.sh",
        f"{root}/build",
        f"crossfl-build-{site.name}",
        "image build",
        args=(name,),
    )
    record_build(d, job, key)
    return job
