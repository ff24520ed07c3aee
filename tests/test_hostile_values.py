"""Site values that reach a shell are checked when the site loads, then quoted wherever they are
used. A hostile value per field is refused in one line naming the file and the field; a value
that passes (an environment value is any one line) renders scripts that `bash -n` accepts and
that, run with stand-ins for the scheduler's and the runtime's commands, create nothing the
value asked for. The endpoint's own schema refuses what a task group's options could inject into
Parsl's `qsub` line or `#SBATCH` header."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crossfl import paths, render, sites
from crossfl.errors import UserError
from crossfl.quoting import quote

REPO = Path(__file__).resolve().parents[1]
PWNED = "/tmp/crossfl-pwned-t16"  # what the injected commands would create


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    shutil.copytree(
        REPO / "deploy" / "sites",
        root / "deploy" / "sites",
        ignore=shutil.ignore_patterns("overrides"),
    )
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.delenv("CROSSFL_SITE_OVERRIDES", raising=False)
    monkeypatch.setattr(paths, "templates_dir", lambda: REPO / "site_templates")
    Path(PWNED).unlink(missing_ok=True)
    yield root / "deploy" / "sites"
    assert not Path(PWNED).exists(), "an injected command ran"


def write_site(catalog: Path, base: str, changes: dict) -> str:
    data = yaml.safe_load((catalog / f"{base}.yaml").read_text())
    data["name"] = "hostile"
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    (catalog / "hostile.yaml").write_text(yaml.safe_dump(data))
    return "hostile"


INJECT = f"x; touch {PWNED}"
SUBST = f"$(touch {PWNED})"
BACKTICK = f"`touch {PWNED}`"
NOSPACE = f"`id>{PWNED}`"
NEWLINE_PBS = "P1\n#PBS -l select=999"
NEWLINE_CMD = f"x\ntouch {PWNED}"

# (base site, field, value): each refused when the site loads
REFUSED = [
    ("polaris", "account", NEWLINE_PBS),
    ("polaris", "account", INJECT),
    ("polaris", "account", SUBST),
    ("polaris", "queue", "debug; touch x"),
    ("polaris", "queue", "-q evil"),
    ("frontier", "qos", BACKTICK),
    ("perlmutter", "constraint", "gpu\n#SBATCH --exclusive"),
    ("perlmutter", "constraint", "gpu'"),
    ("polaris", "select_options", "system=polaris; touch x"),
    ("polaris", "modules", ["apptainer; touch x"]),
    ("polaris", "modules", [SUBST]),
    ("polaris", "module_use", ["/soft/modulefiles'"]),
    ("polaris", "directives", ["-l place=scatter\n#PBS -l select=999"]),
    ("polaris", "worker_init", [NEWLINE_CMD]),
    ("polaris", "env", {"A B": "1"}),
    ("polaris", "env", {"A": "1\nB=2"}),
    ("polaris", "proxy.https", 'http://p:3128"; touch x; "'),
    ("polaris", "proxy.no_proxy", "localhost,$(touch x)"),
    ("polaris", "container.images.cuda", "/x/'crossfl.sif"),
    ("polaris", "container.images.cuda", f"/x/{SUBST}.sif"),
    ("polaris", "container.binds", ["/eagle;touch x"]),
    ("polaris", "container.options", ["--fakeroot; touch x"]),
    ("polaris", "container.env", {"HF_HOME": "a\nb"}),
    ("polaris", "container.build.modules", ["apptainer && touch x"]),
    ("polaris", "container.build.env", {"X;Y": "1"}),
    ("polaris", "container.build.queue", "debug`x`"),
    ("polaris", "container.build.options", ["--fakeroot --nv; x"]),
    ("polaris", "launcher.options", "--ppn 1; touch x"),
    ("aurora", "launcher.local_rank_env", "PALS_LOCAL_RANKID; x"),
    ("polaris", "accelerator.ids", ["0", "1", "2", "3;x"]),
    ("polaris", "deploy.remote_root", "~/crossfl'; touch x; '"),
    ("polaris", "deploy.remote_root", "/home/u/a b"),
    ("polaris", "deploy.data_dir", f"/eagle/{BACKTICK}"),
    ("polaris", "deploy.python_activate", "source venv/bin/activate\ntouch x"),
    ("polaris", "deploy.host", "polaris -oProxyCommand=x"),
    ("polaris", "deploy.user", "u;x"),
    ("polaris", "deploy.endpoint_name", "ep; touch x"),
    ("polaris", "endpoint.worker_init_default", "a\nb"),
    ("polaris", "endpoint.environment", {"A": "x\ny"}),
    ("polaris", "docs", ["https://x/\n"]),
    # the endpoint's own environment (deploy's `python` step) and its login node
    ("polaris", "deploy.python", {"module": "python/3.11; touch x"}),
    ("polaris", "deploy.python", {"module": "python", "module_use": ["/soft'x"]}),
    ("polaris", "deploy.python", {"module": "python", "command": f"python3 {SUBST}"}),
    ("polaris", "deploy.python", {"path": f"/usr/bin/{BACKTICK}"}),
    ("polaris", "deploy.python.standalone.url", f"https://x/{SUBST}.tar.gz"),
    ("polaris", "deploy.venv", "~/venv'; touch x; '"),
    ("polaris", "deploy.login_hop", "ssh -J jump\ntouch x"),
    ("polaris", "deploy.login_hop", "ssh\x1b[2J"),
    ("perlmutter", "queues.regular.scheduler_name", "gpu_regular; touch x"),
]


@pytest.mark.parametrize(
    "base, field, value", REFUSED, ids=[f"{b}-{f}-{i}" for i, (b, f, _) in enumerate(REFUSED)]
)
def test_hostile_value_is_refused_at_load_in_one_line(
    catalog: Path, base: str, field: str, value: object
) -> None:
    name = write_site(catalog, base, {field: value})
    with pytest.raises(UserError) as info:
        sites.load_site(name)
    text = info.value.render()
    print(text)  # the line a user sees (with -s)
    assert "\n" not in text
    assert info.value.file and info.value.file.endswith("hostile.yaml")
    assert (info.value.field or "").startswith(field.split(".")[0]), text
    assert not (catalog.parents[1] / "build").exists()


def test_catalog_values_pass_their_checks() -> None:
    for name in sites.list_sites():
        sites.load_site(name)  # every shipped site loads under the stricter kinds


# -- values that pass, rendered and run ---------------------------------------------------------

# One line each, so they load: what they would run stays text, wherever they land.
PASSING = {
    "env": {"CROSSFL_A": SUBST, "CROSSFL_B": BACKTICK, "CROSSFL_C": f"a'b; touch {PWNED}"},
    "container.env": {"CROSSFL_D": SUBST},
    "container.build.env": {"CROSSFL_E": f'x"; touch {PWNED}; "{BACKTICK}'},
}

STUBS = {
    # the scheduler's and runtime's commands: accept anything, run nothing given to them
    "module": "#!/bin/sh\nexit 0\n",
    "srun": "#!/bin/sh\nexit 0\n",
    "mpiexec": "#!/bin/sh\nexit 0\n",
    "podman-hpc": "#!/bin/sh\nexit 0\n",
    # `apptainer build ... IMAGE.tmp DEF`: leave the image (the script moves it into place)
    "apptainer": '#!/bin/bash\n[ "$1" = build ] && : > "${@: -2:1}"\nexit 0\n',
    "hostname": "#!/bin/sh\necho node\n",
}


def run_script(script: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp / "out.json").write_text("{}")  # client.sh checks the result it names
    home = tmp / "home"
    # the sites' remote_root below, and where deploy unpacks a podman-hpc build's context
    (home / "rr" / "build" / "oci").mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "USER": "u"}
    # The scripts start with `#!/bin/bash -l`: run them with bash as the scheduler would.
    return subprocess.run(
        ["bash", str(script), "/dev/null", str(tmp / "out.json")],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("base", ["polaris", "frontier", "perlmutter"])
def test_passing_values_render_scripts_that_run_nothing_injected(
    catalog: Path, tmp_path: Path, base: str
) -> None:
    changes = {k: v for k, v in PASSING.items() if base == "polaris" or "build" not in k}
    if base == "perlmutter":  # podman-hpc takes the environment as `-e K=V` words (no spaces)
        changes = {"env": {"CROSSFL_A": NOSPACE}, "container.env": {"CROSSFL_D": NOSPACE}}
    account = "m1_g" if base == "perlmutter" else "P1"
    name = write_site(
        catalog, base, {"account": account, "deploy.remote_root": "$HOME/rr", **changes}
    )
    site = sites.load_site(name)
    out = render.render_site(site, tmp_path / "sites")
    scripts = sorted((out / "batch").glob("*.sh"))
    assert scripts
    for script in scripts:
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, f"{script.name}: {syntax.stderr}"
        res = run_script(script, tmp_path)
        assert res.returncode == 0, f"{script.name}: {res.stderr}"
        assert not Path(PWNED).exists(), f"{script.name} ran an injected command"
    # the values arrive as themselves (quoted, not evaluated)
    setup = (out / "batch" / "smoke.sh").read_text()
    for key, value in changes.get("env", {}).items():
        probe = subprocess.run(
            [
                "bash",
                "-c",
                f'{[ln for ln in setup.splitlines() if key + "=" in ln][0]}; printf %s "${key}"',
            ],
            capture_output=True,
            text=True,
        )
        assert probe.stdout == value


def test_the_endpoint_refuses_injected_options(catalog: Path, tmp_path: Path) -> None:
    """A task group's options are checked by the endpoint's own schema before Parsl writes
    them into `#PBS`/`#SBATCH` lines or hands them to `qsub` through a shell."""
    out = render.render_site(sites.load_site("polaris"), tmp_path / "sites")
    base = {"account": "P1", "queue": "debug", "walltime": "00:30:00"}
    for field, value in [
        ("account", NEWLINE_PBS),
        ("account", INJECT),
        ("queue", "debug -A other"),
        ("account", "-Wdepend=x"),
    ]:
        with pytest.raises(UserError) as info:
            render.render_user_config(out, {**base, field: value})
        text = info.value.render()
        assert info.value.field == field or f"{field} " in text, text
        assert "\n" not in text
    text = render.render_user_config(out, base)  # the same options, well formed, pass
    assert 'account: "P1"' in text or "account: P1" in text


def test_the_derived_activate_line_quotes_each_value(catalog: Path, tmp_path: Path) -> None:
    """Where deploy makes the endpoint's venv (deploy.python) and the site names no activate
    line, the one derived from the module and the venv quotes them, keeping $HOME expandable."""
    name = write_site(
        catalog,
        "polaris",
        {
            "deploy.python": {"module": "python/3.11", "module_use": ["$HOME/mods"]},
            "deploy.venv": "~/ep-venv",
            "deploy.python_activate": None,
        },
    )
    line = sites.load_site(name).deploy.python_activate
    assert line == (
        'module use "$HOME/mods"; module load python/3.11; source "$HOME/ep-venv/bin/activate"'
    )
    res = subprocess.run(["bash", "-n", "-c", line or ""], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "word, expect",
    [
        ("plain", "plain"),
        ("~/.crossfl/x", '"$HOME/.crossfl/x"'),
        ("/lus/$USER/crossfl", '"/lus/$USER/crossfl"'),
        ("$HOME/a b", "\"$HOME\"'/a b'"),
        (SUBST, "'" + SUBST + "'"),
        (f"$HOME/{SUBST}", '"$HOME"\'/' + SUBST + "'"),
        ("a'b", "'a'\"'\"'b'"),
    ],
)
def test_one_quoting_helper(word: str, expect: str, tmp_path: Path) -> None:
    assert quote(word) == expect
    res = subprocess.run(
        ["bash", "-c", f"printf %s {quote(word)}"],
        env={"HOME": "/h", "USER": "u", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    want = word.replace("~", "/h", 1) if word.startswith("~/") else word
    want = want.replace("$HOME", "/h").replace("$USER", "u") if "$(" not in word else word
    if word.startswith("$HOME/$("):
        want = "/h/" + SUBST
    assert res.stdout == want
    assert not Path(PWNED).exists()
