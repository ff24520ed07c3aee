"""Worker images: rendered def files, shared pins, apptainer calls (through a PATH shim), the
manifest, and (with CROSSFL_IMAGE_CHECK=1, `make image-check`) the cpu image's build steps run
here in a throwaway venv. Apptainer itself has no package here: see containers/README.md."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from crossfl import images
from crossfl.cli import images as cli_images
from crossfl.errors import UserError

CHECKER = images.CHECKER

REPO = Path(__file__).resolve().parents[1]
EXPECTED_SECTIONS = {
    "arguments",
    "files",
    "post",
    "environment",
    "labels",
    "test",
    "runscript",
    "help",
}
STACK_OF_VENDOR = {"cuda": "cuda", "rocm": "rocm", "xpu": "xpu", "none": "cpu"}
PROJECT_FILES = [
    "containers",
    "requirements/constraints.txt",
    "requirements/worker.txt",
    "requirements/worker-pins.txt",
    "pyproject.toml",
    "README.md",
    "src/crossfl",
    "Makefile",
    "mk/images.mk",
]


@pytest.fixture
def repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROSSFL_ROOT", str(REPO))
    return REPO


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh committed copy of the files an image build reads (a clean clone, in effect)."""
    root = tmp_path / "proj"
    for rel in PROJECT_FILES:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(root), "commit", "-q", "-m", "snapshot"], check=True)
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    return root


FAKE_APPTAINER = '''\
#!{python}
"""Stands in for apptainer: records argv, `build` writes an image holding the def text,
`inspect --labels --json` answers that def's %labels, `sign` appends a signature block."""
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_APPTAINER_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "build":
    target, definition = args[-2], args[-1]
    with open(target, "wb") as out:
        out.write(b"FAKE-SIF\\n" + open(definition, "rb").read())
elif args[0] == "inspect":
    labels, inside = {{}}, False
    for line in open(args[-1]).read().splitlines():
        if line.startswith("%"):
            inside = line.strip() == "%labels"
        elif inside and line.strip():
            key, _, value = line.strip().partition(" ")
            labels[key] = value
    print(json.dumps({{"data": {{"attributes": {{"labels": labels}}}}, "type": "container"}}))
elif args[0] == "sign":
    with open(args[-1], "ab") as out:
        out.write(b"\\nFAKE-SIGNATURE\\n")
'''


@pytest.fixture
def fake_apptainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "shim"
    bindir.mkdir()
    exe = bindir / "apptainer"
    exe.write_text(FAKE_APPTAINER.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "apptainer.log"
    monkeypatch.setenv("FAKE_APPTAINER_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def cli(*args: str) -> tuple[int, str]:
    """The image commands as the main CLI runs them: UserError -> one line, exit 2."""
    app = typer.Typer()
    cli_images.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `image` a sub-command
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, UserError):
        return 2, f"error: {result.exception.render()}"
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def rendered(arch: str) -> images.Stage:
    return images.parse_def(images.def_path(arch).read_text()).final_stage()


# ------------------------------------------------------------------ rendering and structure


def test_every_arch_renders_a_def_file_apptainer_can_read(project: Path) -> None:
    table = images.load_arches()
    assert set(table.arches) == {"cpu", "cpu-debian", "cuda", "rocm", "xpu"}
    for arch, spec in table.arches.items():
        path = images.render_def(arch)
        assert path == project / "build" / "images" / f"crossfl-{arch}.def"
        stage = rendered(arch)
        if spec.bootstrap == "docker":
            assert stage.header == {"bootstrap": "docker", "from": spec.base}
        else:
            assert stage.header == {
                "bootstrap": "debootstrap",
                "osversion": spec.base,
                "mirrorurl": spec.mirror,
                "include": " ".join(spec.include),
            }
        uv = {"files from uv"} if spec.python.source == "uv" else set()
        assert set(stage.sections) == EXPECTED_SECTIONS | uv
        assert images.build_args(stage) == {
            "TORCH_INDEX_URL": spec.torch.index_url,
            **{s.name: "none" for s in images.BUILD_SETTINGS},
        }
        # every %files source exists, relative to the project root apptainer build runs in
        for src, dst in images.files(stage):
            assert not Path(src).is_absolute() and (project / src).exists(), src
            assert dst.startswith(images.PREFIX + "/")
        post = stage.sections["post"].body
        assert f'+{spec.torch.local}"' in post
        assert ("uv python install" in post) == (spec.python.source == "uv")
        assert "crossfl.client" in stage.sections["runscript"].body
        # the labels record what the issue asks for
        found = images.labels(stage)
        assert found["org.crossfl.accelerator"] == arch
        assert found["org.crossfl.version"] == "0.1.0"
        assert len(found["org.crossfl.git-commit"]) == 40
        assert found["org.crossfl.torch"].endswith("+" + spec.torch.local)


def test_every_pip_install_is_constrained_and_torch_is_frozen_first(project: Path) -> None:
    for arch in images.arch_names():
        images.render_def(arch)
        lines = [
            line.strip()
            for line in rendered(arch).sections["post"].body.splitlines()
            if " install " in line and "$PIP" in line
        ]
        assert len(lines) == 3, lines
        torch_line, worker_line, crossfl_line = lines
        assert "--extra-index-url" in torch_line and "--index-url " not in torch_line
        assert f"-c {images.PREFIX}/constraints.txt" in torch_line
        assert f"-c {images.PREFIX}/constraints.txt" in worker_line
        assert f"-c {images.PREFIX}/worker-pins.txt" in worker_line
        assert f"-c {images.PREFIX}/worker-pins.txt" in torch_line
        assert f"-c {images.PREFIX}/torch-pin.txt" in worker_line  # torch cannot be swapped
        assert crossfl_line.endswith(f"--no-deps --no-build-isolation {images.PREFIX}/src")
        post = rendered(arch).sections["post"].body
        assert post.index("torch-pin.txt") < post.index(worker_line)


def test_pins_agree_between_login_node_and_every_image(project: Path) -> None:
    constraints = images.read_constraints()
    login_minor = "%d.%d" % sys.version_info[:2]
    assert images.python_minor() == login_minor
    for name in images.MUST_AGREE:
        assert name in constraints, f"{name} is not pinned in constraints.txt"
        # the endpoint runs from this environment: the pin must be what is installed here
        assert importlib.metadata.version(name) == constraints[name], name
    for arch in images.arch_names():
        images.render_def(arch)
        stage = rendered(arch)
        found = images.labels(stage)
        assert found["org.crossfl.python"] == login_minor
        assert found["org.crossfl.torch"].split("+")[0] == constraints["torch"].split("+")[0]
        for name in ("parsl", "dill", "globus-compute-endpoint", "globus-compute-sdk"):
            assert found[f"org.crossfl.pin.{name}"] == constraints[name]
            assert f"--pin {name}=={constraints[name]}" in stage.sections["test"].body
        assert f"--python-minor {login_minor}" in stage.sections["test"].body
        # the image installs with the login node's very file, byte for byte
        context = project / "build" / "images" / f"crossfl-{arch}.context"
        assert (context / "constraints.txt").read_bytes() == (
            REPO / "requirements" / "constraints.txt"
        ).read_bytes()
    table = images.load_arches()
    assert table.python_version.startswith(login_minor + ".")
    assert table.arches["cpu"].base.startswith(f"python:{login_minor}.")
    assert table.arches["cpu-debian"].python.path.endswith(f"python{login_minor}")


def test_every_dependency_of_the_worker_stack_is_pinned(repo_root: Path) -> None:
    """Walk the installed metadata from requirements/worker.txt (and torch): nothing floats."""
    constraints = images.read_constraints()
    extra = images.read_constraints(REPO / "requirements" / "worker-pins.txt")
    assert not set(extra) & set(constraints)
    seen: set[str] = set()
    todo = [*images.worker_requirements(), "torch"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    unpinned = sorted(seen - set(constraints) - set(extra))
    assert not unpinned, f"not pinned in constraints.txt or worker-pins.txt: {unpinned}"
    # what worker-pins.txt holds satisfies every requirement on it installed here
    for dist in importlib.metadata.distributions():
        for text in dist.requires or []:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            if name in extra and (req.marker is None or req.marker.evaluate({"extra": ""})):
                assert req.specifier.contains(extra[name]), (dist.metadata["Name"], text)
    assert {"parsl", "dill", "globus-compute-endpoint"} <= seen


def test_the_image_ships_the_committed_package(project: Path) -> None:
    (project / "src" / "crossfl" / "uncommitted.py").write_text("x = 1\n")
    images.render_def("cpu")
    context = project / "build" / "images" / "crossfl-cpu.context" / "src"
    assert (context / "src" / "crossfl" / "client" / "device.py").is_file()
    assert (context / "pyproject.toml").is_file() and (context / "README.md").is_file()
    assert not (context / "src" / "crossfl" / "uncommitted.py").exists()
    head = subprocess.run(
        ["git", "-C", str(project), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert images.labels(rendered("cpu"))["org.crossfl.git-commit"] == head


def test_each_accelerator_in_the_site_catalog_has_an_image(repo_root: Path) -> None:
    site_files = sorted((REPO / "deploy" / "sites").glob("*.yaml"))
    if not site_files:
        pytest.skip("no site files in deploy/sites yet")
    stacks = {spec.stack for spec in images.load_arches().arches.values()}
    for path in site_files:
        vendor = (yaml.safe_load(path.read_text()).get("accelerator") or {}).get("vendor", "none")
        assert STACK_OF_VENDOR.get(vendor) in stacks, f"{path.name}: no image for {vendor!r}"
    assert set(STACK_OF_VENDOR.values()) <= stacks  # and every vendor the schema knows


def test_a_bad_arch_names_the_allowed_ones(project: Path) -> None:
    with pytest.raises(UserError) as err:
        images.render_def("tpu")
    assert "'tpu'" in str(err.value) and "cpu, cpu-debian, cuda, rocm, xpu" in str(err.value)
    code, out = cli("image", "def", "tpu")
    assert code == 2 and out.count("\n") == 0 and "allowed: cpu, cpu-debian, cuda, rocm, xpu" in out
    assert not list((project / "build").glob("**/*.def"))


def test_a_drifted_python_minor_is_refused(project: Path) -> None:
    arches = project / "containers" / "arches.yaml"
    arches.write_text(
        arches.read_text().replace('python_version: "3.11.14"', 'python_version: "3.12.7"')
    )
    with pytest.raises(UserError, match="python_version: 3.12.7 is not Python 3.11"):
        images.render_def("cuda")


def test_an_unpinned_worker_requirement_is_refused(project: Path) -> None:
    with (project / "requirements" / "worker.txt").open("a") as handle:
        handle.write("some-unpinned-package\n")
    with pytest.raises(UserError, match="no pin for some-unpinned-package"):
        images.render_def("cpu")


def test_a_bad_arch_table_names_file_and_field(project: Path) -> None:
    arches = project / "containers" / "arches.yaml"
    data = yaml.safe_load(arches.read_text())
    data["arches"]["rocm"]["stack"] = "metal"
    arches.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        images.load_arches()
    assert "arches.yaml: arches.rocm.stack:" in str(err.value)


# ------------------------------------------------------------------ the parser itself


def test_parser_reads_stages_sections_and_rejects_what_apptainer_would() -> None:
    two = textwrap.dedent("""\
        Bootstrap: docker
        From: python:3.11-slim
        Stage: devel
        %post
            echo one
        Bootstrap: localimage
        From: base.sif
        %files from devel
            /a /b
        %runscript
            echo two
        """)
    parsed = images.parse_def(two)
    assert [s.header.get("stage") for s in parsed.stages] == ["devel", None]
    assert parsed.stages[1].sections["files from devel"].args == "from devel"
    assert parsed.stages[0].sections["post"].body.strip() == "echo one"
    for bad, why in [
        ("From: x\n%post\n", "begin with Bootstrap"),
        ("Bootstrap: docker\n%post\n", "needs From"),
        ("Bootstrap: docker\nFrom: x\n%postt\n", "unknown section %postt"),
        ("Bootstrap: docker\nFrom: x\n%post\n%post\n", "a second %post"),
        ("Bootstrap: docker\nFrom: x\njunk\n", "not a `Keyword: value`"),
    ]:
        with pytest.raises(ValueError, match=why):
            images.parse_def(bad)
    assert images.apply_build_args(
        "Bootstrap: docker\nFrom: x\n%arguments\n    A=1\n%post\n    echo {{ A }} {{B}}\n",
        {"B": "2"},
    ).endswith("echo 1 2\n")
    with pytest.raises(ValueError, match="C has no value"):
        images.apply_build_args("Bootstrap: docker\nFrom: x\n%post\n    echo {{ C }}\n")


# ------------------------------------------------------------------ apptainer through a shim


def build_args_here() -> list[str]:
    """The build arguments `crossfl image build` passes from this environment."""
    return [f"--build-arg={k}={v}" for k, v in images.build_arg_values(os.environ).items()]


def test_build_calls_apptainer_and_records_the_digest(project: Path, fake_apptainer: Path) -> None:
    manifest = project / "build" / "images" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    other = {
        "arch": "rocm",
        "image": "build/images/crossfl-rocm.sif",
        "digest": "sha256:" + "0" * 64,
        "size_bytes": 1,
        "built_at": "2026-01-01T00:00:00+00:00",
        "git_commit": "x",
    }
    manifest.write_text(json.dumps({"schema_version": 1, "images": {"rocm": other}}))

    code, out = cli("image", "build", "cpu")
    assert code == 0, out
    fakeroot = ["--fakeroot"] if os.geteuid() != 0 else []
    assert calls(fake_apptainer)[0] == [
        "build",
        *fakeroot,
        *build_args_here(),
        "build/images/crossfl-cpu.sif.partial",
        "build/images/crossfl-cpu.def",
    ]
    assert calls(fake_apptainer)[1] == [
        "inspect",
        "--labels",
        "--json",
        "build/images/crossfl-cpu.sif",
    ]
    sif = project / "build" / "images" / "crossfl-cpu.sif"
    digest = "sha256:" + hashlib.sha256(sif.read_bytes()).hexdigest()
    assert images.image_digest(sif) == digest and digest in out
    assert not sif.with_name(sif.name + ".partial").exists()
    data = images.read_manifest()
    assert data == json.loads(manifest.read_text())
    assert data["images"]["rocm"]["digest"] == other["digest"]  # other archs' entries kept
    entry = data["images"]["cpu"]
    assert entry["digest"] == digest and entry["size_bytes"] == sif.stat().st_size
    assert entry["labels"]["org.crossfl.accelerator"] == "cpu"
    assert entry["git_commit"] == entry["labels"]["org.crossfl.git-commit"]
    assert not entry["signed"]

    code, out = cli("image", "sign", "cpu")
    assert code == 0, out
    assert calls(fake_apptainer)[2] == ["sign", "build/images/crossfl-cpu.sif"]
    signed = images.read_manifest()["images"]["cpu"]
    assert signed["signed"] and signed["digest"] == images.image_digest(sif) != digest


def test_no_fakeroot_flag_and_failed_build_keeps_previous_image(
    project: Path, fake_apptainer: Path, tmp_path: Path
) -> None:
    assert cli("image", "build", "cpu", "--no-fakeroot")[0] == 0
    assert "--fakeroot" not in calls(fake_apptainer)[0]
    sif = project / "build" / "images" / "crossfl-cpu.sif"
    before = sif.read_bytes()
    failing = tmp_path / "shim" / "apptainer"
    failing.write_text("#!/bin/sh\necho 'FATAL: pull failed' >&2\nexit 255\n")
    code, out = cli("image", "build", "cpu")
    assert code == 2 and "apptainer build failed with exit 255" in out
    assert sif.read_bytes() == before
    assert not sif.with_name(sif.name + ".partial").exists()


def test_make_image_runs_apptainer_build(project: Path, fake_apptainer: Path) -> None:
    done = make(project, "image", "ARCH=cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    fakeroot = ["--fakeroot"] if os.geteuid() != 0 else []
    assert calls(fake_apptainer)[0] == [
        "build",
        *fakeroot,
        *build_args_here(),
        "build/images/crossfl-cpu.sif.partial",
        "build/images/crossfl-cpu.def",
    ]
    sif = project / "build" / "images" / "crossfl-cpu.sif"
    assert images.read_manifest()["images"]["cpu"]["digest"] == images.image_digest(sif)
    assert make(project, "image-sign", "ARCH=cpu").returncode == 0
    assert calls(fake_apptainer)[-2][0] == "sign"


def make(project: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    """The project's Makefile, with `setup` taken as done and CROSSFL=`python -m crossfl`
    (what the `crossfl` entry point runs)."""
    env = {**os.environ, "PATH": path or os.environ["PATH"], "CROSSFL_ROOT": str(project)}
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(project),
            "-o",
            ".venv/.installed-stamp",
            *args,
            f"CROSSFL={sys.executable} -m crossfl",
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def no_apptainer_path(tmp_path: Path) -> str:
    bindir = tmp_path / "bin-without-apptainer"
    bindir.mkdir()
    for tool in ("git", "make", "sh", "env"):
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    return str(bindir)


def test_without_apptainer_one_line_and_the_def_is_still_rendered(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = no_apptainer_path(tmp_path)
    monkeypatch.setenv("PATH", path)
    code, out = cli("image", "build", "rocm")
    assert code == 2 and out.count("\n") == 0
    assert "apptainer is not on PATH" in out and "apptainer.org" in out
    assert "build/images/crossfl-rocm.def" in out
    assert (project / "build" / "images" / "crossfl-rocm.def").is_file()

    done = make(project, "image", "ARCH=xpu", path=path)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if not line.startswith("make")]
    assert len(ours) == 1 and "apptainer is not on PATH" in ours[0], done.stderr
    assert (project / "build" / "images" / "crossfl-xpu.def").is_file()

    bad = make(project, "image-def", "ARCH=tpu", path=path)
    assert bad.returncode != 0
    ours = [line for line in bad.stderr.splitlines() if not line.startswith("make")]
    assert ours == ["error: ARCH: unknown ARCH 'tpu'; allowed: cpu, cpu-debian, cuda, rocm, xpu"]


def test_read_manifest_before_any_build_and_on_a_broken_file(project: Path) -> None:
    assert images.read_manifest() == {"schema_version": 1, "images": {}}
    path = project / "build" / "images" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"images": {"cpu": {"arch": "cpu"}}}')
    with pytest.raises(UserError, match="not a crossfl image manifest"):
        images.read_manifest()


# ------------------------------------------------------------------ what runs inside the image


def test_runscript_hands_worker_commands_through_and_the_rest_to_the_client(
    project: Path, tmp_path: Path
) -> None:
    """Globus Compute runs `apptainer run IMAGE globus-compute-endpoint python-exec ...`."""
    images.render_def("cpu")
    stage = rendered("cpu")
    rootfs = tmp_path / "rootfs"
    venv_bin = rootfs / "opt" / "crossfl" / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, says in [("python", "client"), ("globus-compute-endpoint", "endpoint")]:
        (venv_bin / name).write_text(f'#!/bin/sh\necho {says} "$@"\n')
        (venv_bin / name).chmod(0o755)
    script = (stage.sections["environment"].body + stage.sections["runscript"].body).replace(
        images.PREFIX, str(rootfs) + images.PREFIX
    )

    def run(*args: str) -> str:
        return subprocess.run(
            ["/bin/sh", "-c", script, "runscript", *args],
            check=True,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
        ).stdout.strip()

    assert (
        run("globus-compute-endpoint", "python-exec", "parsl.x", "-a", "1")
        == "endpoint python-exec parsl.x -a 1"
    )
    assert run("--site", "x") == "client -m crossfl.client --site x"
    assert run() == "client -m crossfl.client"


def checker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "containers" / "check_image.py"), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        },
    )


def test_check_image_passes_here_and_fails_on_each_drift(
    repo_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    import torch

    constraints = images.read_constraints()
    minor = "%d.%d" % sys.version_info[:2]
    good = [
        "--python-minor",
        minor,
        "--torch",
        torch.__version__,
        "--stack",
        "cpu",
        "--pin",
        f"parsl=={constraints['parsl']}",
        "--pin",
        f"dill=={constraints['dill']}",
    ]
    done = checker(*good, "--devices")  # once as %test runs it: its own process
    assert done.returncode == 0, done.stderr
    devices = json.loads(done.stdout.splitlines()[0])
    assert devices["backend"] == "cpu" and devices["torch"] == torch.__version__

    spec = importlib.util.spec_from_file_location("check_image", REPO / "containers" / CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert module.main(good) == 0
    for change, says in [
        (["--python-minor", "3.12"], "the endpoint runs 3.12"),
        (["--torch", "2.13.0+cu128"], "the image pins 2.13.0+cu128"),
        (["--stack", "cuda"], "not a CUDA build"),
        (["--stack", "rocm"], "not a ROCm build"),
        (["--stack", "xpu"], "not an XPU build"),
        (["--pin", "dill==0.3.8"], "dill 0.3.9 here, 0.3.8 on the login node"),
        (["--pin", "no-such-dist==1"], "no-such-dist is not installed"),
    ]:
        capsys.readouterr()
        assert module.main([*good, *change]) == 1, change
        assert says in capsys.readouterr().err, change
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the worker commands are not what PATH finds
    capsys.readouterr()
    assert module.main([*good, "--devices"]) == 1
    assert "globus-compute-endpoint is not on PATH" in capsys.readouterr().err


def test_the_main_cli_has_the_image_commands(repo_root: Path) -> None:
    from crossfl import cli

    try:
        app = cli.build_app()
    except ImportError as exc:
        pytest.skip(f"another area's CLI module is not there yet: {exc}")
    assert "image" in [group.name for group in app.registered_groups]


# ------------------------------------------------------------------ pins that exist


def test_every_arch_pins_a_published_build_and_base(repo_root: Path) -> None:
    """containers/published.yaml: each entry has a source and a checked date; every arch's
    torch (the constraints' version + its local tag), channel and base are listed there."""
    table = images.load_published()
    torch_version = images.read_constraints()["torch"].split("+")[0]
    assert torch_version in table.torch
    release = table.torch[torch_version]
    for build in [
        *release.published.values(),
        *release.not_published.values(),
        *table.base_images.values(),
        *table.distributions.values(),
    ]:
        assert build.source and build.checked.isoformat() == "2026-11-28"
    assert not set(release.published) & set(release.not_published)
    for name, spec in images.load_arches().arches.items():
        assert images.pin_problems(name, spec, torch_version, table) == [], name
        assert spec.torch.local in release.published, name
        if spec.bootstrap == "docker":
            assert spec.base in table.base_images, name
    # the two pins the issue found to be unpublished stay refused
    assert {"cu128", "rocm6.4"} <= set(release.not_published)


@pytest.mark.parametrize(
    ("arch", "field", "value", "says"),
    [
        (
            "cuda",
            "local",
            "cu128",
            "2.13.0+cu128 is not published (https://github.com/pytorch/FBGEMM",
        ),
        ("rocm", "local", "rocm6.4", "2.13.0+rocm6.4 is not published"),
        ("cuda", "index_url", "https://download.pytorch.org/whl/cu130", "comes from"),
        ("xpu", "base", "intel/oneapi-hpckit:2025.2.0-0-devel-ubuntu24.04", "is not listed"),
    ],
)
def test_an_unpublished_pin_is_refused_when_rendering(
    project: Path, arch: str, field: str, value: str, says: str
) -> None:
    path = project / "containers" / "arches.yaml"
    data = yaml.safe_load(path.read_text())
    target = data["arches"][arch] if field == "base" else data["arches"][arch]["torch"]
    target[field] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError) as err:
        images.render_def(arch)
    assert f"arches.yaml: arches.{arch}: " in str(err.value) and says in str(err.value)


def test_no_stale_claim_that_the_endpoint_refuses_a_mismatched_worker(repo_root: Path) -> None:
    """globus-compute-endpoint switches Parsl's version check off (engines/globus_compute.py);
    the docs must not say the interchange refuses the manager."""
    from globus_compute_endpoint.engines import GlobusComputeEngine
    from parsl.providers import LocalProvider

    engine = GlobusComputeEngine(provider=LocalProvider(), address="127.0.0.1")
    assert engine.executor._check_python_mismatch is False
    for rel in ("containers/arches.yaml", "containers/README.md", "requirements/worker.txt"):
        text = (REPO / rel).read_text()
        assert "doesn't match\")" not in text and "the manager is refused" not in text, rel
        assert "refuses the manager" not in text, rel


# ------------------------------------------------------------------ environment, hosts, args


def test_the_venv_libraries_lead_ld_library_path_in_every_image(project: Path) -> None:
    """%environment after a base image's baked LD_LIBRARY_PATH (Apptainer sources the base's
    10-docker2singularity.sh before 90-environment.sh): the venv's lib/ comes first, so the
    torch XPU wheel's SYCL runtime is not shadowed by the base's oneAPI."""
    baked = "/opt/intel/oneapi/compiler/2026.0/lib:/opt/intel/oneapi/umf/1.1/lib"
    for arch in images.arch_names():
        images.render_def(arch)
        env = rendered(arch).sections["environment"].body
        for before in (f"export LD_LIBRARY_PATH={baked}\n", "unset LD_LIBRARY_PATH\n"):
            out = subprocess.run(
                ["/bin/sh", "-c", before + env + 'echo "$LD_LIBRARY_PATH"\necho "$PATH"'],
                capture_output=True,
                text=True,
                env={"PATH": "/usr/bin:/bin"},
                check=True,
            ).stdout.split("\n")
            lib, path = out[0].split(":"), out[1].split(":")
            assert lib[0] == f"{images.PREFIX}/venv/lib", (arch, out)
            assert lib[1:] == (baked.split(":") if "export" in before else []), (arch, out)
            assert path[0] == f"{images.PREFIX}/venv/bin"


def test_check_image_finds_a_shadowed_sycl_runtime() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_image", REPO / "containers" / CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv = "/opt/crossfl/venv"
    good = (
        f"7f00-7f01 r-xp 00000000 08:01 1 {venv}/lib/libsycl.so.9\n"
        f"7f02-7f03 r-xp 00000000 08:01 2 {venv}/lib/libur_loader.so.0\n"
        "7f04-7f05 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    )
    assert module.check_loaded_libs(good, venv) == []
    oneapi = "/opt/intel/oneapi/compiler/2025.2/lib"
    bad = good + f"7f06-7f07 r-xp 0 08:01 4 {oneapi}/libur_loader.so.0\n"
    problems = module.check_loaded_libs(bad, venv)
    assert len(problems) == 1 and "libur_loader.so.0 loaded from /opt/intel/oneapi" in problems[0]


def test_every_host_a_build_reaches_is_listed(project: Path) -> None:
    """Each URL in the rendered def and the base image's registry are in `crossfl image hosts`
    (and in the def's header comment); uv arches list the python-build-standalone host."""
    import re
    from urllib.parse import urlparse

    for arch, spec in images.load_arches().arches.items():
        images.render_def(arch)
        text = images.def_path(arch).read_text()
        parsed = images.parse_def(text)
        stage = parsed.final_stage()
        listed = set(images.build_hosts(spec))
        names = {h.split(" ", 1)[0] for h in listed}
        body = "".join(stage.sections[n].body for n in ("arguments", "post"))
        urls = {urlparse(u).hostname for u in re.findall(r"https?://[^\s\"']+", body)}
        urls |= (
            {urlparse(stage.header["mirrorurl"]).hostname} if "mirrorurl" in stage.header else set()
        )
        assert urls <= names, (arch, urls - names)
        assert {"pypi.org", "files.pythonhosted.org"} <= names
        if spec.python.source == "uv":
            assert {"ghcr.io", "github.com", "releases.astral.sh"} <= names
            uv = parsed.stages[0].header["from"]  # the stage uv is copied from
            assert uv.startswith("ghcr.io/astral-sh/uv:") and len(parsed.stages) == 2
        for host in listed:
            assert f"#   {host}" in text
    assert images.build_hosts(images.get_arch("cuda"))[0] == "nvcr.io"
    assert images.build_hosts(images.get_arch("rocm"))[0] == "docker.io"
    code, out = cli("image", "hosts", "xpu")
    assert code == 0 and out.splitlines()[0] == "docker.io" and "download.pytorch.org" in out


def test_proxies_and_pip_settings_reach_post_only_as_build_arguments(project: Path) -> None:
    """%post runs with none of the host's environment (Apptainer: build_env.rst): the settings
    come in as build arguments, exported under both spellings the tools read; "none" leaves
    them unset."""
    images.render_def("cuda")
    text = images.def_path("cuda").read_text()
    env_of = (
        'env | grep -E "^(https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|PIP_[A-Z_]+|'
        'TORCH_INDEX_URL)=" | sort'
    )

    def post_env(overrides: dict[str, str]) -> list[str]:
        post = images.parse_def(images.apply_build_args(text, overrides)).final_stage()
        preamble = post.sections["post"].body.split("    set -eu\n")[0]
        done = subprocess.run(
            ["/bin/sh", "-c", preamble + env_of],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            check=True,
        )
        return done.stdout.splitlines()

    assert post_env({}) == ["TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126"]
    proxy = "http://proxy.alcf.anl.gov:3128"
    got = post_env(
        {
            "HTTPS_PROXY": proxy,
            "NO_PROXY": "localhost,*.alcf.anl.gov",
            "PIP_INDEX_URL": "https://mirror.example/simple",
        }
    )
    assert f"HTTPS_PROXY={proxy}" in got and f"https_proxy={proxy}" in got
    assert "no_proxy=localhost,*.alcf.anl.gov" in got and not any("HTTP_PROXY" in g for g in got)
    assert "PIP_INDEX_URL=https://mirror.example/simple" in got
    assert images.build_arg_values({"https_proxy": proxy, "PIP_RETRIES": "1", "OTHER": "x"}) == {
        "HTTPS_PROXY": proxy,
        "PIP_RETRIES": "1",
    }
    with pytest.raises(ValueError, match="both parts"):  # Apptainer refuses empty values too
        images.build_args(
            images.parse_def("Bootstrap: docker\nFrom: x\n%arguments\n    A=\n").only_stage()
        )


# ------------------------------------------------------------------ the OCI Containerfile


def test_containerfile_parses_and_shares_the_defs_steps(project: Path) -> None:
    """podman-hpc's Containerfile: same base, channel, labels, environment and %files as the
    def; its install.sh, runscript and test.sh are the def's %post steps, %runscript and %test,
    byte for byte (one rendering of containers/steps.j2)."""
    from dockerfile_parse import DockerfileParser

    for arch, spec in images.load_arches().arches.items():
        if spec.bootstrap != "docker":
            with pytest.raises(UserError, match="a Containerfile starts FROM a registry image"):
                images.render_containerfile(arch)
            continue
        path = images.render_containerfile(arch)
        assert path == project / "build" / "images" / f"crossfl-{arch}.Containerfile"
        parsed = DockerfileParser(fileobj=path.open("rb"), env_replace=False)
        assert parsed.baseimage == spec.base
        assert parsed.args == {"TORCH_INDEX_URL": spec.torch.index_url}
        images.render_def(arch)
        stage = rendered(arch)
        assert parsed.labels == images.labels(stage)
        instructions = [(i["instruction"], i["value"]) for i in parsed.structure]
        copies = [v.split() for k, v in instructions if k == "COPY" and "--from=" not in v]
        context = project / "build" / "images" / f"crossfl-{arch}.context"
        for src, dst in copies:
            assert (project / src).exists() and dst.startswith(images.PREFIX + "/"), src
        assert [c for c in copies if not c[0].endswith(("install.sh", "runscript", "test.sh"))] == [
            list(pair) for pair in images.files(stage)
        ]
        runs = [v for k, v in instructions if k == "RUN"]
        assert runs == [f'["/bin/sh", "-ex", "{images.PREFIX}/install.sh"]']
        # no ENTRYPOINT, the base image's cleared: what podman-hpc runs is run as given
        # (shared-run's `podman run -d IMAGE sleep infinity`, the engine's worker command)
        entry = [v for k, v in instructions if k == "ENTRYPOINT"]
        assert entry == ["[]"], entry
        assert effective_command(instructions, ["sleep", "infinity"]) == ["sleep", "infinity"]
        envs = [v.split("=", 1) for k, v in instructions if k == "ENV"]
        assert [(k, v.strip('"')) for k, v in envs] == images.image_environment(arch, spec)
        # the shell steps: one text in both renderings
        install = (context / "install.sh").read_text()
        assert textwrap.indent(install, "    ") in stage.sections["post"].body
        assert "$TORCH_INDEX_URL" in install and "{{" not in install
        runscript = (context / "runscript").read_text()
        assert runscript.startswith("#!/bin/sh\n")
        assert (
            textwrap.indent(runscript.split("\n", 1)[1], "    ").strip()
            == stage.sections["runscript"].body.strip()
        )
        assert (
            textwrap.indent((context / "test.sh").read_text(), "    ").strip()
            == stage.sections["test"].body.strip()
        )
        assert "podman-hpc migrate crossfl-" in path.read_text()
    code, out = cli("image", "containerfile", "rocm")
    assert code == 0 and out.strip() == "build/images/crossfl-rocm.Containerfile"
    done = make(project, "image-containerfile", "ARCH=xpu")
    assert done.returncode == 0, done.stderr
    assert (project / "build" / "images" / "crossfl-xpu.Containerfile").is_file()


def effective_command(instructions: list[tuple[str, str]], args: list[str]) -> list[str]:
    """What `podman run IMAGE ARGS...` executes: the last ENTRYPOINT (exec form) + ARGS, as
    the OCI image config composes them (ARGS replace CMD)."""
    entries = [json.loads(v) for k, v in instructions if k == "ENTRYPOINT"]
    return [*(entries[-1] if entries else []), *args]


def test_cpu_and_cpu_debian_defs_differ_only_in_the_base(project: Path) -> None:
    """make image-check builds cpu-debian: its def must be the cpu def but for the bootstrap
    header, the interpreter path and the arch's own name and description."""
    table = images.load_arches()
    texts = {}
    for arch in ("cpu", "cpu-debian"):
        images.render_def(arch)
        texts[arch] = images.def_path(arch).read_text()
    cpu, deb = table.arches["cpu"], table.arches["cpu-debian"]
    normal = texts["cpu-debian"].split("\n\n", 1)[1].replace(deb.python.path, cpu.python.path)
    normal = normal.replace(deb.description, cpu.description).replace("cpu-debian", "cpu")
    normal = normal.replace(f"base-image {deb.base}", f"base-image {cpu.base}")
    want = texts["cpu"].split("\n\n", 1)[1]
    want_lines = [ln for ln in want.splitlines() if "#   " not in ln]
    got_lines = [ln for ln in normal.splitlines() if "#   " not in ln]  # hosts differ
    assert got_lines == want_lines


# ------------------------------------------------------------------ a real build here


@pytest.mark.skipif(
    os.environ.get("CROSSFL_IMAGE_CHECK") != "1",
    reason="slow (bootstraps Debian, installs torch + the worker stack, runs a "
    "federation inside): `make image-check` runs it",
)
def test_image_check_builds_the_rootfs_and_runs_a_federation_inside(repo_root: Path) -> None:
    from testkit.image_check import check_image, check_log

    result = check_image("cpu-debian")
    constraints = images.read_constraints()
    assert result.torch == constraints["torch"].split("+")[0] + "+cpu"
    assert result.devices["backend"] == "cpu"
    rootfs = Path(result.rootfs)
    assert (rootfs / "opt" / "crossfl" / "venv" / "bin" / "globus-compute-endpoint").is_file()
    assert (rootfs / ".singularity.d" / "env" / "90-environment.sh").is_file()
    assert not Path("/opt/crossfl").exists()  # the host has no image prefix: only the rootfs
    tasks = result.federation["tasks"]
    assert {(t["round"], t["site"]) for t in tasks} == {
        (1, "inside-a"),
        (1, "inside-b"),
        (2, "inside-a"),
        (2, "inside-b"),
    }
    assert all(t["status"] == "ok" for t in tasks), tasks
    # every training task ran on the image's interpreter, which exists only in the rootfs
    assert {t["python"] for t in tasks} == {f"{images.PREFIX}/venv/bin/python"}
    assert len(result.federation["rounds"]) == 2
    log = check_log("cpu-debian")
    assert "check_image.py: ok" in log.read_text()
    steps = ", ".join(f"{name} {sec:.0f} s" for name, sec in result.seconds.items())
    print(f"\nimage-check cpu-debian ({'cached' if result.cached else 'built'}): {steps}")


def test_uv_arches_copy_uv_in_and_install_nothing_with_apt(project: Path) -> None:
    """No `apt-get install` in %post (ALCF: "Do NOT apt-get install; it can fail under
    fakeroot", and Polaris and Aurora build with --fakeroot): uv comes from its own pinned image
    (`%files from uv`, `COPY --from`); and before %post first imports torch, LD_LIBRARY_PATH is
    what %environment gives the image (the venv's lib/ first: torch XPU's oneAPI runtime, not
    the base image's)."""
    for arch, spec in images.load_arches().arches.items():
        images.render_def(arch)
        parsed = images.parse_def(images.def_path(arch).read_text())
        post = parsed.final_stage().sections["post"].body
        commands = [ln.strip() for ln in post.splitlines() if not ln.strip().startswith("#")]
        assert not [c for c in commands if "apt-get" in c], arch
        env = dict(images.image_environment(arch, spec))
        export = f'export LD_LIBRARY_PATH="{env["LD_LIBRARY_PATH"]}"'
        assert export in post, arch
        assert post.index(export) < post.index("import torch"), arch
        assert post.index(export) < post.index("check_image.py"), arch
        if spec.python.source == "uv":
            copied = parsed.final_stage().sections["files from uv"]
            assert copied.args == "from uv" and copied.body.split() == [
                "/uv",
                f"{images.PREFIX}/bin/uv",
            ]
            assert parsed.stages[0].header["stage"] == "uv"
            text = images.render_containerfile(arch).read_text()
            assert (
                f"COPY --from={parsed.stages[0].header['from']} /uv {images.PREFIX}/bin/uv" in text
            )
