"""`crossfl deploy` puts the image where the site wants it (container.image_source): built at
the facility (login node, or the batch build job on the real one-node Slurm), pulled by
digest, or uploaded; against the real sshd (tests/sshd.py), with a stand-in `apptainer` on
the login node's PATH (testkit/fake_apptainer.py: no Apptainer on these machines). The dry run
needs neither SSH nor an image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from testkit import fake_apptainer
from testkit.sdk_client import RecordingClient
from typer.testing import CliRunner

from crossfl.errors import UserError
from remote_project import activate_line, head, make_project, override
from sshd import SshServer, sshd, start_sshd, stop_sshd  # noqa: F401  (fixture)

SITE = "localhost-ssh"
DIGEST = "sha256:" + "ab" * 32
REF = f"oras://registry.example.org/crossfl/cpu@{DIGEST}"
OTHER_REF = f"oras://registry.example.org/crossfl/cpu@sha256:{'cd' * 32}"


def run_cli(*args: str) -> tuple[int, str]:
    """The deploy commands as `crossfl` runs them: a UserError is one line and exit 2."""
    import typer

    from crossfl.cli import deploy as cli_deploy

    app = typer.Typer()
    cli_deploy.register(app)
    app.command("noop", hidden=True)(lambda: None)
    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, UserError):
        return 2, res.output + "error: " + res.exception.render() + "\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def error_line(out: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, out
    print(lines[0])
    return lines[0]


def state(project: Path, site: str = SITE) -> dict | None:
    p = project / "deploy" / "state" / f"{site}.json"
    return json.loads(p.read_text()) if p.exists() else None


# -- the dry run: no SSH, no image ----------------------------------------------------------------


@pytest.fixture
def fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout with the facility sites and no build/ at all (no image, no def file)."""
    root = make_project(tmp_path / "proj", ["frontier", "polaris", "aurora", "perlmutter"])
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(root / "overrides"))
    # Frontier's and Aurora's images live on the project filesystem, named by these
    monkeypatch.setenv("CROSSFL_FRONTIER_PROJECT", "abc123")
    monkeypatch.setenv("CROSSFL_AURORA_PROJECT", "MyProject")
    monkeypatch.setenv("CROSSFL_POLARIS_PROJECT", "MyProject")  # Polaris' too, on Eagle
    return root


def test_frontier_dry_run_on_a_fresh_clone_prints_the_whole_plan(fresh_clone: Path) -> None:
    assert not (fresh_clone / "build").exists()
    code, out = run_cli("deploy", "frontier", "--dry-run")
    print(out)
    assert code == 0, out
    lines = [ln for ln in out.splitlines() if ln.startswith("[dry-run]")]
    assert lines[0] == "[dry-run] would connect over SSH to frontier.olcf.ornl.gov"
    text = "\n".join(lines)

    def at(needle: str) -> int:
        assert needle in text, needle
        return text.index(needle)

    # every remote command and transfer, in order: bundle, build inputs, the build on the login
    # node, its wait, the verification, then the endpoint
    order = [
        at("bundle/endpoint/config.yaml"),
        at("crossfl-rocm.build.tar.part"),
        at("tar -xf crossfl-rocm.build.tar"),
        at(
            "nohup bash -c 'bash \"/lustre/orion/abc123/scratch/$USER/crossfl/bundle/"
            'batch/build_image.sh"'
        ),
        at("wait for the image build"),
        at("apptainer inspect --labels --json"),
        at('sha256sum "/lustre/orion/abc123/scratch/$USER/crossfl/images/crossfl-rocm.sif"'),
        at("crossfl-rocm.sif.origin"),
        at("globus-compute-endpoint configure"),
        at("globus-compute-endpoint start"),
    ]
    assert order == sorted(order)
    assert "not built here" not in out and "dry run: nothing was transferred or run" in out
    # the build inputs were rendered here (no Apptainer needed); nothing else was written
    assert (fresh_clone / "build" / "images" / "crossfl-rocm.def").is_file()
    assert not (fresh_clone / "deploy" / "state").exists()


def test_batch_build_and_pull_dry_runs(fresh_clone: Path) -> None:
    code, out = run_cli("deploy", "polaris", "--dry-run")
    assert code == 0, out
    # $USER stays expandable where it runs: double quotes, never single
    assert 'qsub "/eagle/MyProject/$USER/crossfl/bundle/batch/build_image.sh"' in out
    assert "'/eagle/MyProject/$USER" not in out
    assert "qstat -x -f '<job id>'" in out  # the scheduler's own query, for that job
    override(fresh_clone, "aurora", {"container": {"image_source": {"method": "pull", "ref": REF}}})
    code, out = run_cli("deploy", "aurora", "--dry-run")
    assert code == 0, out
    assert (
        "apptainer pull --disable-cache /lus/flare/projects/MyProject/$USER/crossfl/images/"
        f"crossfl-xpu.sif.part {REF}"
    ) in out.replace("'", "").replace('"', "")
    assert "qsub" not in out and "build.tar" not in out


def test_upload_needs_the_local_image(fresh_clone: Path) -> None:
    override(fresh_clone, "frontier", {"container": {"image_source": {"method": "upload"}}})
    code, out = run_cli("deploy", "frontier", "--dry-run")
    line = error_line(out)
    assert code == 2 and "uploads the image crossfl-rocm.sif, which is not built here" in line
    assert "image_source.method: build or pull" in line


@pytest.mark.parametrize(
    "ref, expect",
    [
        ("oras://registry.example.org/crossfl/rocm:latest", "is not pinned by digest"),
        ("docker://registry.example.org/crossfl/rocm:2.13", "docker://HOST/REPO@sha256:"),
        ("oras://registry.example.org/crossfl/rocm@sha256:1234", "is not pinned by digest"),
    ],
)
def test_a_tag_without_digest_is_refused(fresh_clone: Path, ref: str, expect: str) -> None:
    override(
        fresh_clone, "frontier", {"container": {"image_source": {"method": "pull", "ref": ref}}}
    )
    code, out = run_cli("deploy", "frontier", "--dry-run")
    line = error_line(out)
    assert code == 2 and expect in line and "container.image_source.ref" in line
    assert "overrides/frontier.yaml" in line


def test_pull_needs_a_ref(fresh_clone: Path) -> None:
    override(fresh_clone, "frontier", {"container": {"image_source": {"method": "pull"}}})
    code, out = run_cli("deploy", "frontier", "--dry-run")
    assert code == 2 and "method pull needs ref" in error_line(out)


# -- against the real sshd ---------------------------------------------------------------------


@pytest.fixture
def project(
    tmp_path: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch, sdk_client: type
) -> Path:
    """localhost-ssh with a container, aimed at the test sshd; the login node's PATH starts
    with the fake apptainer (its ~/.bash_profile, as a facility user would set it)."""
    root = make_project(tmp_path / "proj", [SITE])
    bindir = tmp_path / "fakebin"
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    from crossfl.deploy.image import expected_labels

    good = {**expected_labels(), "org.crossfl.git-commit": "0" * 40}
    bad = {**good, "org.crossfl.pin.parsl": "2020.1.1"}
    fake_apptainer.install(bindir, {REF: good, OTHER_REF: bad})
    (sshd.home / ".bash_profile").write_text(f"export PATH={bindir}:$PATH\n")
    remote_root = sshd.home / tmp_path.name / "crossfl"
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(root / "overrides"))
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(sshd.ssh_config))
    monkeypatch.setenv("CROSSFL_SSH_PORT", str(sshd.port))
    monkeypatch.setenv("CROSSFL_REMOTE_ROOT", str(remote_root))
    monkeypatch.setenv("CROSSFL_REMOTE_ACTIVATE", activate_line(sshd.home / tmp_path.name / "gc"))
    yield root
    (sshd.home / ".bash_profile").unlink(missing_ok=True)


def with_container(root: Path, source: dict, site: str = SITE, **extra: object) -> None:
    override(
        root,
        site,
        {
            "container": {
                "runtime": "apptainer",
                "images": {"cpu": "{{remote_root}}/images/crossfl-cpu.sif"},
                "image_source": source,
                **extra,
            }
        },
    )


def image_path() -> Path:
    return Path(os.environ["CROSSFL_REMOTE_ROOT"]) / "images" / "crossfl-cpu.sif"


def test_pull_by_digest_then_unchanged(project: Path, tmp_path: Path) -> None:
    with_container(project, {"method": "pull", "ref": REF})
    code, out = run_cli("deploy", SITE, "--no-start")
    print(out)
    assert code == 0, out
    dest = image_path()
    assert json.loads(dest.read_text())["ref"] == REF
    assert (dest.parent / "crossfl-cpu.sif.origin").read_text() == f"pull {REF}\n"
    assert not dest.with_name(dest.name + ".part").exists()
    img = state(project)["image"]
    assert img["source"] == "pull" and img["origin"] == f"pull {REF}"
    assert img["sha256"] == (dest.parent / "crossfl-cpu.sif.sha256").read_text().strip()
    assert img["labels"]["org.crossfl.pin.parsl"]
    assert "built from commit 000000000000" in out.replace("\n", " ")  # a note, not a failure
    # an unchanged digest is skipped: nothing pulled, nothing changed
    stamp = dest.stat().st_mtime_ns
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "nothing changed" in out, out
    assert fake_apptainer.calls(tmp_path / "fakebin", "pull") == 1
    assert dest.stat().st_mtime_ns == stamp


def test_pulled_image_with_other_pins_is_refused(project: Path) -> None:
    with_container(project, {"method": "pull", "ref": OTHER_REF})
    code, out = run_cli("deploy", SITE, "--no-start")
    line = error_line(out)
    assert code == 2 and "does not match this checkout" in line and "parsl 2020.1.1" in line
    dest = image_path()
    assert not dest.exists() and dest.with_name(dest.name + ".part.rejected").exists()
    assert state(project)["image"] is None


def test_pull_failure_is_one_line(project: Path) -> None:
    ref = f"oras://registry.example.org/crossfl/missing@{DIGEST}"
    with_container(project, {"method": "pull", "ref": ref})
    code, out = run_cli("deploy", SITE, "--no-start")
    line = error_line(out)
    assert code == 2 and "apptainer pull" in line and "manifest unknown" in line
    assert not image_path().with_name("crossfl-cpu.sif.part").exists()


def test_build_on_the_login_node_then_unchanged(project: Path, tmp_path: Path) -> None:
    with_container(project, {"method": "build"})
    code, out = run_cli("deploy", SITE, "--no-start")
    print(out)
    assert code == 0, out
    dest = image_path()
    labels = json.loads(dest.read_text())["labels"]
    assert labels["org.crossfl.git-commit"] == head(project)  # the def file of this checkout
    img = state(project)["image"]
    assert img["source"] == "build" and img["origin"].startswith("build ")
    assert img["labels"]["org.crossfl.git-commit"] == head(project)
    assert state(project)["image_build"] is None
    log = (
        Path(os.environ["CROSSFL_REMOTE_ROOT"])
        / "build"
        / "images"
        / "crossfl-build-localhost-ssh.log"
    )
    assert "org.crossfl.git-commit" in log.read_text()  # build_image.sh's own inspect
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "nothing changed" in out, out
    assert fake_apptainer.calls(tmp_path / "fakebin", "build") == 1
    # a commit that changes nothing the image is made of: still nothing to do
    commit(project, "docs/notes.md", "notes\n")
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "nothing changed" in out, out
    assert fake_apptainer.calls(tmp_path / "fakebin", "build") == 1
    # a change to the package the image carries: built again, from the new commit
    commit(project, "src/crossfl/_marker.py", "MARK = 1\n")
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "image (build)" in out, out
    assert fake_apptainer.calls(tmp_path / "fakebin", "build") == 2
    assert state(project)["image"]["labels"]["org.crossfl.git-commit"] == head(project)


def commit(root: Path, rel: str, text: str) -> None:
    import subprocess

    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "add", rel], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", rel], cwd=root, check=True)


def test_failed_build_says_where_its_output_is(project: Path, tmp_path: Path) -> None:
    with_container(project, {"method": "build"})
    (tmp_path / "fakebin" / "fail-build").write_text("FATAL: no space left on device")
    code, out = run_cli("deploy", SITE, "--no-start")
    line = error_line(out)
    assert code == 2 and "image build" in line and "FATAL: no space" in line
    assert "crossfl-build-localhost-ssh.log" in line
    assert state(project)["image_build"] is None and state(project)["image"] is None


# -- the batch build job on the real one-node Slurm ---------------------------------------------


@pytest.fixture
def slurm_project(tmp_path: Path, slurm_cluster, monkeypatch: pytest.MonkeyPatch, sdk_client):
    """local-slurm-ssh with a container built by the batch build job: an sshd whose sessions
    reach the test Slurm (SLURM_CONF), the fake apptainer first on the login PATH."""
    from sshd import skip_reason

    why = skip_reason()
    if why:
        pytest.skip(why)
    server, proc = start_sshd(tmp_path / "sshd", env={"SLURM_CONF": str(slurm_cluster.conf)})
    try:
        root = make_project(tmp_path / "proj", ["local-slurm-ssh"])
        monkeypatch.setenv("CROSSFL_ROOT", str(root))
        bindir = tmp_path / "fakebin"
        fake_apptainer.install(bindir)
        (server.home / ".bash_profile").write_text(f"export PATH={bindir}:$PATH\n")
        monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(root / "overrides"))
        monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(server.ssh_config))
        monkeypatch.setenv("CROSSFL_SSH_PORT", str(server.port))
        monkeypatch.setenv("CROSSFL_REMOTE_ROOT", str(server.home / "crossfl"))
        monkeypatch.setenv("CROSSFL_REMOTE_ACTIVATE", activate_line(server.home / "gc"))
        yield root
    finally:
        stop_sshd(proc)


def test_batch_build_job_on_real_slurm(slurm_project: Path, tmp_path: Path) -> None:
    site = "local-slurm-ssh"
    override(
        slurm_project,
        site,
        {
            "container": {
                "runtime": "apptainer",
                "images": {"cuda": "{{remote_root}}/images/crossfl-cuda.sif"},
                "image_source": {"method": "build"},
                "build": {"on_compute_node": True, "walltime": "00:05:00", "options": []},
            }
        },
    )
    code, out = run_cli("deploy", site, "--no-start")
    print(out)
    assert code == 0, out
    assert "image build job" in out and "submitted" in out
    img = state(slurm_project, site)["image"]
    dest = Path(os.environ["CROSSFL_REMOTE_ROOT"]) / "images" / "crossfl-cuda.sif"
    assert img["source"] == "build" and img["remote_path"] == str(dest)
    assert json.loads(dest.read_text())["labels"]["org.crossfl.git-commit"] == head(slurm_project)
    outputs = list((dest.parent.parent / "build" / "images").glob("crossfl-build-*-*.out"))
    assert len(outputs) == 1 and "org.crossfl.git-commit" in outputs[0].read_text()
    code, out = run_cli("deploy", site, "--no-start")
    assert code == 0 and "nothing changed" in out, out
    assert fake_apptainer.calls(tmp_path / "fakebin", "build") == 1


# -- podman-hpc (Perlmutter): built at the site, migrated, pinned by its ID ---------------------


@pytest.fixture
def podman_project(project: Path, sshd: SshServer, tmp_path: Path) -> Path:
    """The same login node with a stand-in `podman-hpc` first on its PATH."""
    from testkit import fake_podman

    bindir = tmp_path / "podmanbin"
    good = {**__import__("crossfl.deploy.image").deploy.image.expected_labels()}
    good["org.crossfl.git-commit"] = "0" * 40
    fake_podman.install(bindir, {PODMAN_REF.removeprefix("docker://"): good})
    profile = sshd.home / ".bash_profile"
    profile.write_text(profile.read_text() + f"export PATH={bindir}:$PATH\n")
    return project


PODMAN_REF = f"docker://registry.example.org/crossfl/cpu@sha256:{'ef' * 32}"


def with_podman(root: Path, source: dict) -> None:
    override(
        root,
        SITE,
        {
            "container": {
                "runtime": "podman-hpc",
                "images": {"cpu": "crossfl-cpu"},
                "image_source": source,
            }
        },
    )


def test_podman_build_migrate_and_pin_by_id(podman_project: Path, tmp_path: Path) -> None:
    """`podman-hpc build` of this checkout's Containerfile on the login node, `podman-hpc
    migrate`, labels checked; the state records the image ID (and its manifest digest), and the
    endpoint installed there names the image by that ID, not by a tag; a second deploy changes
    nothing and builds nothing."""
    from testkit import fake_podman

    bindir = tmp_path / "podmanbin"
    with_podman(podman_project, {"method": "build"})
    code, out = run_cli("deploy", SITE, "--no-start")
    print(out)
    assert code == 0, out
    img = state(podman_project)["image"]
    assert img["source"] == "build" and img["origin"].startswith("build ")
    key = img["origin"].split()[1]
    assert img["remote_path"] == f"crossfl-cpu:{key[:12]}"
    stored = fake_podman.store(bindir)
    assert list(stored) == [img["sha256"]] and stored[img["sha256"]]["migrated"]
    assert img["digest"].startswith("sha256:")
    assert img["labels"]["org.crossfl.git-commit"] == head(podman_project)
    assert fake_podman.calls(bindir, "build") == 1 and fake_podman.calls(bindir, "migrate") == 1
    template = ep_dir_of(podman_project) / "user_config_template.yaml.j2"
    assert f'container_uri: "{img["sha256"]}"' in template.read_text()
    assert "crossfl-cpu" not in template.read_text()  # no name, no tag
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0 and "nothing changed" in out, out
    assert fake_podman.calls(bindir, "build") == 1
    # doctor finds it by its ID; gone from podman-hpc's stores, it says so
    code, out = doctor_cli(SITE)
    line = next(ln for ln in out.splitlines() if ln.startswith("image "))
    assert " ok " in line and img["sha256"][:12] in line, out
    (bindir / "store.json").write_text("{}")
    code, out = doctor_cli(SITE)
    assert code == 1 and "podman-hpc has no image" in out, out


def doctor_cli(*args: str) -> tuple[int, str]:
    import typer

    from crossfl.cli import doctor as cli_doctor

    app = typer.Typer()
    cli_doctor.register(app)
    app.command("noop", hidden=True)(lambda: None)
    res = CliRunner().invoke(app, ["doctor", *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def test_podman_pull_by_digest(podman_project: Path, tmp_path: Path) -> None:
    from testkit import fake_podman

    with_podman(podman_project, {"method": "pull", "ref": PODMAN_REF})
    code, out = run_cli("deploy", SITE, "--no-start")
    assert code == 0, out
    img = state(podman_project)["image"]
    name = PODMAN_REF.removeprefix("docker://")
    assert img["source"] == "pull" and img["remote_path"] == name
    assert fake_podman.calls(tmp_path / "podmanbin", "pull") == 1
    template = ep_dir_of(podman_project) / "user_config_template.yaml.j2"
    assert f'container_uri: "{img["sha256"]}"' in template.read_text()


def test_podman_mpi_site_registers_the_functions_the_server_submits(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sdk_client: type
) -> None:
    """Perlmutter's shape: podman-hpc and the MPI engine. Each task function's shell text
    names the image, and the server submits it with the image deploy placed, by its ID
    (with_deployed_image): deploy registers those functions, not the ones naming the tag, so
    a run's plan finds the registered ids unchanged."""
    from testkit import fake_podman

    from crossfl.functions import kit_functions, registered_functions, shell_text
    from crossfl.sites import load_site, with_deployed_image

    site = "local-slurm-ssh"
    root = make_project(tmp_path / "proj", [site])
    bindir = tmp_path / "podmanbin"
    good = {**__import__("crossfl.deploy.image").deploy.image.expected_labels()}
    fake_podman.install(bindir, {PODMAN_REF.removeprefix("docker://"): good})
    (sshd.home / ".bash_profile").write_text(f"export PATH={bindir}:$PATH\n")
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(root / "overrides"))
    monkeypatch.setenv("CROSSFL_SSH_CONFIG", str(sshd.ssh_config))
    monkeypatch.setenv("CROSSFL_SSH_PORT", str(sshd.port))
    monkeypatch.setenv("CROSSFL_REMOTE_ROOT", str(sshd.home / tmp_path.name / "crossfl"))
    monkeypatch.setenv("CROSSFL_REMOTE_ACTIVATE", activate_line(sshd.home / tmp_path.name / "gc"))
    override(
        root,
        site,
        {
            "container": {
                "runtime": "podman-hpc",
                "images": {"cuda": "crossfl-cuda"},
                "image_source": {"method": "pull", "ref": PODMAN_REF},
            },
            "endpoint": {"tasks": "mpi", "max_workers_per_node": 1},
        },
    )
    try:
        code, out = run_cli("deploy", site, "--no-start")
        assert code == 0, out
    finally:
        (sshd.home / ".bash_profile").unlink(missing_ok=True)
    st = state(root, site)
    image_id = st["image"]["sha256"]
    pinned = with_deployed_image(load_site(site))
    assert image_id in shell_text(pinned, "train") and "crossfl-cuda" not in shell_text(
        pinned, "train"
    )
    for kind, f in kit_functions(pinned).items():
        assert st["functions"][kind]["digest"] == f.digest, kind
    ids = [fid for _, fid in registered_functions(pinned)]  # the plan's check: no refusal
    assert ids == [st["functions"][k]["function_id"] for k in ("train", "evaluate")]
    assert len(RecordingClient.registered) == 2


def test_podman_upload_is_refused_before_anything(podman_project: Path) -> None:
    with_podman(podman_project, {"method": "upload"})
    code, out = run_cli("deploy", SITE, "--no-start")
    line = error_line(out)
    assert code == 2 and "not uploaded" in line and "image_source.method" in line
    assert state(podman_project) is None


def ep_dir_of(root: Path) -> Path:
    line = os.environ["CROSSFL_REMOTE_ACTIVATE"]
    gc = line.split("GLOBUS_COMPUTE_USER_DIR=", 1)[1].split(";", 1)[0].split()[0]
    return Path(gc) / f"crossfl-{SITE}"
