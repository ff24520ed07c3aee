"""The site catalog: every site loads; overrides and ${VAR}s apply; each kind of bad input is one
UserError naming the file, the field and the fix, and nothing is written to build/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from crossfl import paths, render, sites
from crossfl.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CATALOG = ("frontier", "aurora", "polaris", "perlmutter", "local", "local-slurm")


@pytest.fixture
def catalog(tmp_path, monkeypatch) -> Path:
    """A private project root holding a copy of the catalog (so tests may add bad sites)."""
    root = tmp_path / "root"
    shutil.copytree(
        REPO / "deploy" / "sites",
        root / "deploy" / "sites",
        ignore=shutil.ignore_patterns("overrides"),
    )
    (root / "deploy" / "sites" / "overrides").mkdir()
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.delenv("CROSSFL_SITE_OVERRIDES", raising=False)
    monkeypatch.setattr(paths, "templates_dir", lambda: REPO / "site_templates")
    return root / "deploy" / "sites"


def write_site(catalog: Path, name: str, base: str, **changes) -> Path:
    data = yaml.safe_load((catalog / f"{base}.yaml").read_text())
    data["name"] = name
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = catalog / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def refused(catalog: Path, name: str) -> UserError:
    with pytest.raises(UserError) as info:
        render.render_site(name)
    assert not (catalog.parents[1] / "build" / "sites" / name).exists()
    return info.value


# --- the catalog -----------------------------------------------------------------------------


def test_list_sites_has_the_catalog(catalog):
    assert set(CATALOG) <= set(sites.list_sites())


@pytest.mark.parametrize("name", CATALOG)
def test_every_site_loads(catalog, name):
    site = sites.load_site(name)
    assert site.name == name
    if name not in ("frontier", "aurora", "polaris"):  # those: the project filesystem (below)
        assert site.deploy.remote_root == f"~/.crossfl/{name}"
    assert site.deploy.endpoint_name == f"crossfl-{name}"
    assert site.accelerator.vendor in ("cuda", "rocm", "xpu", "none")
    vendor = site.accelerator.vendor
    assert sites.image_arch(site) == ("cpu" if vendor == "none" else vendor)


def test_facility_facts():
    frontier = sites.load_site("frontier")
    # normal is the default QOS; debug forbids production work (one job in any state)
    assert (frontier.scheduler, frontier.queue, frontier.qos) == ("slurm", "batch", "normal")
    assert frontier.qos_limits["debug"].production is False
    assert frontier.qos_limits["debug"].jobs_per_user == 1
    assert [(b.min_nodes, b.max_nodes, b.max_walltime) for b in frontier.queues["batch"].bins][
        :3
    ] == [(1, 91, "02:00:00"), (92, 183, "06:00:00"), (184, 1881, "12:00:00")]
    assert frontier.queues["batch"].max_walltime == "12:00:00"  # the overall maxima stay
    assert frontier.queues["batch"].max_nodes == 9472
    assert (frontier.accelerator.vendor, frontier.accelerator.devices_per_node) == ("rocm", 8)
    assert frontier.accelerator.visible_devices_env == "ROCR_VISIBLE_DEVICES"
    assert frontier.cpus_per_node == 56 and len(frontier.node.cpu_set()) == 56
    assert frontier.env["MIOPEN_CUSTOM_CACHE_DIR"] == frontier.env["MIOPEN_USER_DB_PATH"]
    assert frontier.deploy.remote_root.startswith("/lustre/orion/")
    polaris = sites.load_site("polaris")
    assert polaris.filesystems == ["home", "eagle"]
    assert polaris.deploy.remote_root.startswith("/eagle/")  # not the 50 GB home
    assert "-l singularity_fakeroot=true" in polaris.directives  # its jobs run --fakeroot
    assert polaris.accelerator.rank_devices == ["0", "1", "2", "3"]  # the workers' convention
    assert polaris.env["TMPDIR"] == "/tmp"
    assert [(b.min_nodes, b.max_walltime) for b in polaris.queues["prod"].bins] == [
        (10, "03:00:00"),
        (25, "06:00:00"),
        (100, "24:00:00"),
    ]
    assert polaris.container.build is not None and polaris.container.build.on_compute_node
    aurora = sites.load_site("aurora")
    assert aurora.accelerator.device_ids == [str(i) for i in range(12)]
    assert aurora.cpus_per_node == 208
    assert aurora.accelerator.env == {"ZE_FLAT_DEVICE_HIERARCHY": "FLAT"}
    assert aurora.local_rank_env == "PALS_LOCAL_RANKID" and aurora.env["TMPDIR"] == "/tmp"
    assert (aurora.queues["capacity"].max_nodes, aurora.queues["capacity"].max_walltime) == (
        16,
        "168:00:00",
    )
    assert not {0, 52, 104, 156} & aurora.node.cpu_set()
    assert aurora.proxy.https == "http://proxy.alcf.anl.gov:3128" and "-k doe" in aurora.directives
    perl = sites.load_site("perlmutter")
    assert perl.constraint == "gpu" and perl.qos == "regular"
    assert perl.container.runtime == "podman-hpc" and perl.image() == "crossfl-cuda"
    assert perl.queues["shared"].part is not None and "part" in perl.queues["shared"].unverified
    local = sites.load_site("local")
    assert local.scheduler == "local" and local.container.runtime == "none"
    assert sites.image_arch(local) == "cpu"


@pytest.mark.parametrize("name", ["frontier", "aurora", "polaris", "perlmutter"])
def test_every_facility_limit_cites_its_source(name):
    site = sites.load_site(name)
    entries = {**site.queues, **site.qos_limits}
    assert entries
    for entry in entries.values():
        assert entry.source is not None and entry.source.url.startswith("https://")
        assert str(entry.source.checked) == "2026-11-28"
    assert site.node is not None and site.node.source is not None


def test_image_path_fills_remote_root(catalog, monkeypatch):
    monkeypatch.setenv("CROSSFL_POLARIS_PROJECT", "MyProject")
    site = sites.load_site("polaris")
    assert site.image() == "/eagle/MyProject/$USER/crossfl/images/crossfl-cuda.sif"


def test_project_directory_comes_from_a_variable(catalog, monkeypatch):
    """Frontier's images and run directories live on Orion, under the project a ${VAR} names.
    Unset, the site still loads and renders; what needs the path stops with one line."""
    monkeypatch.delenv("CROSSFL_FRONTIER_PROJECT", raising=False)
    site = sites.load_site("frontier")
    assert "<CROSSFL_FRONTIER_PROJECT>" in site.deploy.remote_root
    render.render_site(site, catalog.parents[1] / "out")
    with pytest.raises(UserError) as info:
        site.require_set("deploy")
    text = info.value.render()
    assert (
        "frontier.yaml: deploy.remote_root: needs ${CROSSFL_FRONTIER_PROJECT}, which is "
        "not set (site frontier) (fix: " in text
    )
    assert "export CROSSFL_FRONTIER_PROJECT=<your OLCF project ID" in text
    assert info.value.file.endswith("frontier.yaml") and "\n" not in text
    site.require_set("account")  # other fields are not held up
    from crossfl.deploy.flow import deployment

    with pytest.raises(UserError, match="needs \\$\\{CROSSFL_FRONTIER_PROJECT\\}"):
        with deployment("frontier"):  # stops before connecting to anything
            pass
    monkeypatch.setenv("CROSSFL_FRONTIER_PROJECT", "abc123")
    site = sites.load_site("frontier")
    site.require_set()
    assert site.deploy.remote_root == "/lustre/orion/abc123/scratch/$USER/crossfl"
    assert site.image() == "/lustre/orion/abc123/scratch/$USER/crossfl/images/crossfl-rocm.sif"
    (catalog / "overrides" / "frontier.yaml").write_text("deploy: {remote_root: /x/y}\n")
    monkeypatch.delenv("CROSSFL_FRONTIER_PROJECT")
    sites.load_site("frontier").require_set()  # the overrides file set it: no variable needed


# --- per-user values -------------------------------------------------------------------------


def test_overrides_file_in_catalog_dir(catalog):
    (catalog / "overrides" / "frontier.yaml").write_text(
        "account: abc123\ndeploy: {host: myfrontier, data_dir: /lustre/orion/abc123/chem}\n"
    )
    site = sites.load_site("frontier")
    assert site.account == "abc123"
    assert site.deploy.host == "myfrontier" and site.deploy.data_dir.endswith("/chem")
    assert site.queue == "batch"  # untouched fields stay


def test_overrides_from_env_dir_and_explicit_path(catalog, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "polaris.yaml").write_text("account: ProjA\n")
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(mine))
    assert sites.load_site("polaris").account == "ProjA"
    explicit = tmp_path / "x.yaml"
    explicit.write_text("account: ProjB\n")
    assert sites.load_site("polaris", overrides=explicit).account == "ProjB"


def test_overrides_gitignored():
    text = (REPO / "deploy" / "sites" / "overrides" / ".gitignore").read_text()
    assert "*" in text.split()


def test_env_references(catalog, monkeypatch):
    monkeypatch.setenv("CROSSFL_AURORA_ACCOUNT", "FromEnv")
    assert sites.load_site("aurora").account == "FromEnv"
    monkeypatch.delenv("CROSSFL_AURORA_ACCOUNT")
    assert sites.load_site("aurora").account is None  # ${VAR:-} -> unset


def test_unset_env_reference_names_field(catalog, monkeypatch):
    monkeypatch.delenv("CROSSFL_NO_SUCH", raising=False)
    write_site(catalog, "bad", "polaris", account="${CROSSFL_NO_SUCH}")
    err = refused(catalog, "bad")
    assert err.field == "account" and "CROSSFL_NO_SUCH" in err.message
    assert "export CROSSFL_NO_SUCH" in err.fix and err.file.endswith("bad.yaml")


def test_project_root_placeholder():
    site = sites.load_site("local-slurm")
    assert (
        site.fill(site.endpoint.worker_init_default)
        == f"source {paths.project_root()}/.venv/bin/activate"
    )


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_site(catalog):
    with pytest.raises(UserError) as info:
        sites.load_site("summit")
    assert "unknown site 'summit'" in info.value.message
    assert "frontier" in info.value.fix and info.value.file.endswith("summit.yaml")
    err = refused(catalog, "summit")
    assert "unknown site" in err.message


@pytest.mark.parametrize(
    "changes, field, fix_words",
    [
        ({"walltime": "2h"}, "walltime", "01:00:00"),
        ({"walltime": "02:00:00"}, "walltime", "01:00:00"),  # over polaris debug
        ({"queue": "gpu"}, "queue", "debug-scaling"),
        ({"nodes_per_block": 3}, "nodes_per_block", "2"),
        ({"accelerator__devices_per_node": 0}, "accelerator", "devices_per_node"),
        ({"accelerator__ids": ["0", "1", "1", "2"]}, "accelerator", "distinct"),
        (
            {"endpoint__cpu_affinity": "list:0-7:8-15"},
            "endpoint.cpu_affinity",
            "one list per device",
        ),
        (
            {"endpoint__cpu_affinity": "list:0-7:8-15:16-23:24-31"},
            "endpoint.cpu_affinity",
            "not nearest",
        ),
        ({"queues__debug__source": None}, "queues.debug.source", "cite"),
        (
            {
                "queues__prod__bins": [
                    {"min_nodes": 10, "max_nodes": 30, "max_walltime": "03:00:00"},
                    {"min_nodes": 25, "max_nodes": 99, "max_walltime": "06:00:00"},
                ]
            },
            "queues.prod",
            "overlap",
        ),
        ({"queues__debug__unverified": ["walltime"]}, "queues.debug.unverified", "max_walltime"),
        (
            {"container__images": {"rocm": "/x/crossfl-rocm.sif"}},
            "container.images.cuda",
            "crossfl-cuda.sif",
        ),
        ({"directives": ["-l place=scatter", "-Q fast"]}, "directives[1]", "qsub"),
        ({"directives": ["-l gpus_galore=4"]}, "directives[0]", "resource"),
        ({"filesystems": ["home", "flare"]}, "filesystems", "eagle"),
        ({"launcher__type": "srun"}, "launcher.type", "mpiexec"),
        ({"acount": "typo"}, "acount", "unknown field"),
        ({"scheduler": "lsf"}, "scheduler", "slurm"),
    ],
)
def test_bad_polaris_variants(catalog, changes, field, fix_words):
    write_site(catalog, "bad", "polaris", **changes)
    err = refused(catalog, "bad")
    assert err.field == field, err.render()
    assert err.file.endswith("bad.yaml")
    assert fix_words in err.render()
    assert "Traceback" not in err.render()


@pytest.mark.parametrize(
    "base, changes, field, words",
    [
        ("frontier", {"walltime": "30:00:00"}, "walltime", "02:00:00 for 1-91 nodes"),
        ("frontier", {"launcher__options": "-c 7"}, "launcher.options", "cpus_per_node"),
        ("frontier", {"cpus_per_node": None}, "cpus_per_node", "share"),
        (
            "frontier",
            {"endpoint__cpu_affinity": "list:48-55:56-63:16-23:24-31:0-7:8-15:32-39:40-47"},
            "endpoint.cpu_affinity",
            "may not use",
        ),
        ("aurora", {"queue": "prod"}, "nodes_per_block", "256"),
        ("aurora", {"queue": "debug", "max_blocks": 2}, "max_blocks", "any state"),
        (
            "perlmutter",
            {"container__images": {"cuda": "/x/crossfl-cuda.sif"}},
            "container.images.cuda",
            "by name",
        ),
        ("perlmutter", {"env": {"A": "two words"}}, "env", "podman-hpc run -e"),
        ("perlmutter", {"container__env": {"HF_HOME": "/x/{y}"}}, "container", "brace"),
        (
            "polaris",
            {"queues__debug__part": {"cpus": 8}, "queues__debug__max_nodes": 1},
            "queues",
            "whole nodes",
        ),
        ("frontier", {"directives": ["--gpus-per-nod=8"]}, "directives[0]", "sbatch has no option"),
        ("frontier", {"filesystems": ["home"]}, "filesystems", "PBS"),
        ("perlmutter", {"qos": "debug", "walltime": "01:00:00"}, "walltime", "00:30:00"),
        ("local", {"accelerator__devices_per_node": 2}, "accelerator", "vendor 'none'"),
        ("local", {"launcher__type": "srun"}, "launcher.type", "single"),
        ("aurora", {"accelerator__ids": ["0"]}, "accelerator", "make them match"),
        ("aurora", {"filesystems": ["home", "eagle"]}, "filesystems", "flare"),
        ("aurora", {"min_blocks": 3}, "max_blocks", "raise it"),
        ("polaris", {"accelerator__bind": "scheduler"}, "accelerator.bind", "local-rank"),
        ("polaris", {"limits_by": "qos"}, "limits_by", "PBS Pro has no QOS"),
        ("polaris", {"launcher__type": "single"}, "launcher.type", "mpiexec"),
        ("local", {"directives": ["-x"]}, "directives", "no scheduler directives"),
        ("local", {"endpoint__tasks": "mpi"}, "endpoint.tasks", "runs none"),
    ],
)
def test_bad_other_sites(catalog, base, changes, field, words):
    write_site(catalog, "bad", base, **changes)
    err = refused(catalog, "bad")
    assert err.field == field, err.render()
    assert words in err.render()


@pytest.mark.parametrize(
    "base, changes, field, words",
    [
        (
            "local",
            {"endpoint__encrypted": False, "endpoint__address": None},
            "endpoint.encrypted",
            "listening on every interface",
        ),
        (
            "local",
            {"endpoint__encrypted": False, "endpoint__address": "10.1.2.3"},
            "endpoint.encrypted",
            "listening on 10.1.2.3",
        ),
        (
            "local",
            {"endpoint__encrypted": False, "endpoint__address": "0.0.0.0"},
            "endpoint.encrypted",
            "set encrypted to true",
        ),
        ("frontier", {"endpoint__encrypted": False}, "endpoint.encrypted", "listening on hsn0"),
        ("local", {"endpoint__address": "localhost"}, "endpoint.address", "not an IP address"),
        (
            "local",
            {"endpoint__address_interface": "eth0"},
            "endpoint.address",
            "either address or address_interface",
        ),
    ],
)
def test_an_open_listener_is_refused_at_load(catalog, base, changes, field, words):
    """An unencrypted interchange that listens beyond loopback runs whatever anyone who
    reaches it sends: refused in one line, naming the field and the fix."""
    write_site(catalog, "bad", base, **changes)
    err = refused(catalog, "bad")
    assert err.field == field, err.render()
    assert words in err.render()
    assert len(err.render().splitlines()) == 1, err.render()


def test_unencrypted_on_loopback_is_allowed(catalog):
    write_site(catalog, "plain", "local", endpoint__encrypted=False)  # address: 127.0.0.1
    site = sites.load_site("plain")
    assert not site.endpoint.encrypted and site.endpoint.loopback_only()


def test_several_bad_fields_one_message_each(catalog):
    write_site(
        catalog,
        "bad",
        "frontier",
        walltime="forever",
        nodes_per_block=0,
        accelerator__vendor="nvidia",
    )
    err = refused(catalog, "bad")
    lines = err.message.splitlines()
    assert lines[0] == "invalid site:"
    fields = sorted(line.strip().split(":")[0] for line in lines[1:])
    assert fields == ["accelerator.vendor", "nodes_per_block", "walltime"]


def test_bad_yaml(catalog):
    (catalog / "bad.yaml").write_text("name: bad\nscheduler: [slurm\n")
    err = refused(catalog, "bad")
    assert "not valid YAML" in err.message and err.file.endswith("bad.yaml")


def test_bad_override_is_reported_against_the_override_file(catalog, tmp_path, monkeypatch):
    """A value from an overrides file is reported against that file, not the catalog's."""
    ov = catalog / "overrides" / "frontier.yaml"
    ov.write_text("walltime: 99:00:00\n")
    with pytest.raises(UserError) as info:
        sites.load_site("frontier")
    assert info.value.field == "walltime" and info.value.file == str(ov)
    ov.write_text("directives: [--gpus-per-nod=8]\n")  # a list, replaced whole
    with pytest.raises(UserError) as info:
        sites.load_site("frontier")
    assert info.value.field == "directives[0]" and info.value.file == str(ov)
    ov.write_text("accelerator: {devices_per_node: 0}\n")  # a model check of a merged block
    with pytest.raises(UserError) as info:
        sites.load_site("frontier")
    assert info.value.field == "accelerator" and info.value.file == str(ov)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "polaris.yaml").write_text("deploy:\n  host: ${CROSSFL_NO_SUCH}\n")
    monkeypatch.delenv("CROSSFL_NO_SUCH", raising=False)
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(mine))
    with pytest.raises(UserError) as info:
        sites.load_site("polaris")
    assert info.value.field == "deploy.host" and info.value.file == str(mine / "polaris.yaml")


def test_bad_catalog_value_with_overrides_names_the_catalog(catalog):
    write_site(catalog, "bad", "polaris", walltime="2h")
    (catalog / "overrides" / "bad.yaml").write_text("account: ProjA\n")
    with pytest.raises(UserError) as info:
        sites.load_site("bad")
    assert info.value.field == "walltime" and info.value.file == str(catalog / "bad.yaml")
    (catalog / "overrides" / "bad.yaml").write_text("nodes_per_block: 0\n")
    with pytest.raises(UserError) as info:  # one bad value in each file: each line names its own
        sites.load_site("bad")
    assert info.value.file == str(catalog / "bad.yaml")
    lines = {ln.strip().split(":")[0]: ln for ln in info.value.message.splitlines()[1:]}
    assert "overrides" not in lines["walltime"], info.value.render()
    assert f"(in {catalog / 'overrides' / 'bad.yaml'})" in lines["nodes_per_block"]


def test_jinja_markup_in_a_passthrough_value_is_refused(catalog):
    write_site(catalog, "bad", "polaris", worker_init=["echo {{ account }}"])
    err = refused(catalog, "bad")
    assert err.field == "worker_init" and "Jinja" in err.message


def test_cli_reports_errors_without_traceback(catalog):
    import subprocess
    import sys

    write_site(catalog, "bad", "polaris", walltime="2h")
    proc = subprocess.run(
        [sys.executable, "-c", "from crossfl.cli import main; main()", "render", "bad"],
        capture_output=True,
        text=True,
        cwd=catalog.parents[1],
        env={**__import__("os").environ, "CROSSFL_ROOT": str(catalog.parents[1])},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "bad.yaml: walltime:" in " ".join(proc.stderr.split())


def test_multi_user_needs_identity_domain(catalog):
    write_site(catalog, "bad", "polaris", endpoint__mode="multi-user")
    err = refused(catalog, "bad")
    assert err.field == "endpoint" and "identity_domain" in err.fix


def test_cli_sites_table_and_render_all(catalog, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from crossfl.cli import sites as cli_sites

    app = typer.Typer()
    cli_sites.register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["sites"], terminal_width=200)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if " frontier " in line)
    assert "slurm" in row and "rocm" in row and " 8 " in row and "apptainer" in row
    out = tmp_path / "out"
    monkeypatch.setenv("CROSSFL_FRONTIER_PROJECT", "abc123")  # ${VAR:?}s render refuses unset
    monkeypatch.setenv("CROSSFL_AURORA_PROJECT", "MyProject")
    monkeypatch.setenv("CROSSFL_POLARIS_PROJECT", "MyProject")  # Polaris' root is on Eagle too
    result = runner.invoke(app, ["render", "--all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert set(CATALOG) <= {p.name for p in out.iterdir()}
    result = runner.invoke(app, ["render", "polaris", "--out", str(out)])
    assert result.exit_code == 0 and "rendered polaris" in result.output


def test_perlmutter_account_rule(catalog, tmp_path):
    write_site(catalog, "bad", "perlmutter", account="m1234")
    err = refused(catalog, "bad")
    assert err.field == "account" and "_g$" in err.message
    out = render.render_site(sites.load_site("perlmutter"), tmp_path)
    with pytest.raises(UserError) as info:
        render.render_user_config(out, {"account": "m1234"})
    assert info.value.field == "account" and "_g$" in info.value.fix
    assert "m1234_g" in render.render_user_config(out, {"account": "m1234_g"})
