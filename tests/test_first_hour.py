"""What a new user meets in the first hour (issue 19): the install's extras, commands run from
any directory of the project, overrides and ${VAR}s that are checked, copyable hints, and
output that fits 80 columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossfl.cli import build_app
from crossfl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> tuple[int, str]:
    """Run `crossfl ARGS` in this process; its exit status and what it printed (a UserError as
    the one line `crossfl` itself prints)."""
    result = CliRunner().invoke(build_app(), list(args))
    if isinstance(result.exception, UserError):
        return 2, result.output + result.exception.render()
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


# ------------------------------------------------------------------ extras


def test_a_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import crossfl.extras

    real = crossfl.extras.find_spec
    monkeypatch.setattr(
        crossfl.extras, "find_spec", lambda name: None if name == "rdkit" else real(name)
    )
    code, out = cli("data", "build-chem", "--out", "build/nowhere")
    assert code == 2 and "crossfl data build-chem needs rdkit" in out
    assert "'.[data]'" in out and not (ROOT / "build" / "nowhere").exists()
    crossfl.extras.require("train", "x")  # installed here: no error
    monkeypatch.setattr(crossfl.extras, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"transformers, peft, tokenizers.*\.\[train\]"):
        crossfl.extras.require("train", "site east trains on this machine and")


# ------------------------------------------------------------------ the quick start


def readme_quick_start() -> list[str]:
    """The commands of README's first code block, as a new user types them."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln.split("#")[0].strip() for ln in block.splitlines() if ln.split("#")[0].strip()]


def test_the_quick_start_works_in_a_fresh_shell() -> None:
    """A fresh shell has no `crossfl` on PATH: the quick start runs make targets, or puts the
    venv's bin first before it calls `crossfl`; `make setup` makes that venv."""
    import sys

    commands = readme_quick_start()
    assert commands[0].startswith("make ")
    activated = False
    for command in commands:
        if command in ("source .venv/bin/activate", ". .venv/bin/activate"):
            activated = True
        assert command.startswith(("make ", ".venv/bin/", "source ", ". ")) or activated, command
    assert any(c.startswith("crossfl ") for c in commands)  # the shell is shown the command
    assert (Path(sys.executable).parent / "crossfl").is_file()  # what `make setup` installs
    makefile = (ROOT / "Makefile").read_text()
    assert "VENV := .venv" in makefile and "-m venv $(VENV)" in makefile


# ------------------------------------------------------------------ the project root


def test_commands_work_from_any_directory_of_the_project(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from crossfl import paths

    monkeypatch.delenv("CROSSFL_ROOT", raising=False)
    monkeypatch.chdir(ROOT / "deploy" / "sites")
    assert paths.project_root() == ROOT
    code, out = cli("sites")
    assert code == 0 and "frontier" in out and "local-slurm-mpi" in out
    monkeypatch.chdir(tmp_path)  # no project here or above: one line saying where to run
    for args in (["sites"], ["status"], ["render", "local"]):
        code, out = cli(*args)
        assert code == 2 and "no site catalog" in out and "CROSSFL_ROOT" in out, out
    monkeypatch.setenv("CROSSFL_ROOT", str(ROOT))
    assert cli("sites")[0] == 0
    assert "CROSSFL_ROOT" in (ROOT / "README.md").read_text()


def test_an_experiment_path_from_the_root_works_in_a_subdirectory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crossfl.server.experiment import resolve_experiment_path

    monkeypatch.delenv("CROSSFL_ROOT", raising=False)
    monkeypatch.chdir(ROOT / "deploy")
    found = resolve_experiment_path("deploy/experiments/local-demo.yaml")
    assert found.resolve() == ROOT / "deploy" / "experiments" / "local-demo.yaml"


# ------------------------------------------------------------------ sites and overrides


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root with the real catalog and templates, nothing deployed."""
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(ROOT / "deploy" / "sites", root / "deploy" / "sites")
    shutil.rmtree(root / "deploy" / "sites" / "overrides", ignore_errors=True)
    (root / "site_templates").symlink_to(ROOT / "site_templates")
    monkeypatch.setenv("CROSSFL_ROOT", str(root))
    monkeypatch.delenv("CROSSFL_SITE_OVERRIDES", raising=False)
    monkeypatch.setenv("CROSSFL_FRONTIER_PROJECT", "abc123")
    monkeypatch.setenv("CROSSFL_FRONTIER_ACCOUNT", "abc123")
    return root


def test_a_never_deployed_facility_says_so_first(project: Path) -> None:
    """chem-lora's frontier entry runs MPI tasks with no shared directory: before, its plan
    stopped on transport.shared_dir; "never deployed" comes first now."""
    import yaml

    from crossfl.server.experiment import load_experiment
    from crossfl.server.plan import plan_run

    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "chem-lora.yaml").read_text())
    raw["sites"] = [s for s in raw["sites"] if s["site"] == "frontier"]
    for entry in raw["sites"]:
        entry.pop("transport", None)
    path = project / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    exp, _ = load_experiment(path)
    with pytest.raises(UserError, match="never deployed") as info:
        plan_run(exp, path)
    assert "make deploy SITE=frontier" in (info.value.fix or "")


def test_a_site_overrides_path_that_does_not_exist_is_an_error(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from crossfl.sites import load_site

    for missing in (tmp_path / "nope.yaml", tmp_path / "no-such-dir"):
        monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(missing))
        with pytest.raises(UserError, match="CROSSFL_SITE_OVERRIDES") as info:
            load_site("local")
        assert info.value.file == str(missing)
    (tmp_path / "mine").mkdir()  # a directory without this site's file: no overrides
    monkeypatch.setenv("CROSSFL_SITE_OVERRIDES", str(tmp_path / "mine"))
    assert load_site("local").name == "local"


def test_render_refuses_an_unset_variable(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    monkeypatch.delenv("CROSSFL_FRONTIER_PROJECT")
    code, text = cli("render", "frontier", "--out", str(out))
    assert code == 2 and "CROSSFL_FRONTIER_PROJECT" in text and "is not set" in text
    assert not out.exists()
    code, text = cli("render", "--all", "--out", str(out))
    assert code == 2 and not out.exists()  # every site is checked before any is written
    monkeypatch.setenv("CROSSFL_FRONTIER_PROJECT", "abc123")
    monkeypatch.setenv("CROSSFL_AURORA_PROJECT", "MyProject")
    code, text = cli("render", "frontier", "--out", str(out))
    assert code == 0 and (out / "frontier" / "endpoint" / "config.yaml").is_file()


def test_status_of_a_never_deployed_site_asks_no_login_node(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crossfl.deploy.flow

    class NoSsh:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("status tried SSH for a site never deployed")

    monkeypatch.setattr(crossfl.deploy.flow, "Remote", NoSsh)
    code, out = cli("status", "frontier")
    assert code == 0 and "never deployed" in out and "crossfl deploy frontier" in out


# ------------------------------------------------------------------ runs and reports


def test_report_of_an_unfinished_run_says_how_far_and_how_to_continue(tmp_path: Path) -> None:
    from rich.console import Console

    from crossfl.server.report import print_report
    from test_output_width import write_run

    deep = tmp_path / ("a-directory-name-long-enough-to-push-the-path-past-80-columns" * 2)
    run_dir = write_run(deep / "runs" / "w-20261207-120000", rounds=5, done=2, finished=False)
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_report(run_dir, console)
    lines = console.export_text().splitlines()
    assert "unfinished: round 2 of 5" in lines
    assert any(f"crossfl resume {run_dir}`" in line for line in lines)  # one line, whole
    assert any(line.startswith("after 2 rounds: answer tokens right") for line in lines)
    finished = write_run(deep / "runs" / "done", rounds=3, done=3, finished=True)
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_report(finished, console)
    assert "unfinished" not in console.export_text()


def test_report_prints_plot_paths_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_output_width import write_run

    deep = tmp_path / ("a-directory-name-long-enough-to-push-the-path-past-80-columns" * 2)
    run_dir = write_run(deep / "runs" / "w-1")
    code, out = cli("report", str(run_dir))
    assert code == 0
    for plot in ("loss_vs_time.png", "site_timeline.png", "bytes_per_round.png"):
        assert f"wrote {run_dir / plot}" in out.splitlines()


def test_no_run_directory_lists_the_latest_runs_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("CROSSFL_ROOT", str(tmp_path))
    for age, name in enumerate(["zz-newest", "aa-middle", "mm-oldest"]):
        (tmp_path / "runs" / name).mkdir(parents=True)
        spec = tmp_path / "runs" / name / "experiment.yaml"
        spec.write_text("name: x\n")
        os.utime(spec, (1e9 - age * 100, 1e9 - age * 100))
    code, out = cli("report", "no-such-run")
    assert code == 2 and "zz-newest, aa-middle, mm-oldest" in out


def test_the_bytes_legend_covers_no_bar(tmp_path: Path) -> None:
    from crossfl.server.report import bytes_figure
    from crossfl.server.telemetry import live_records
    from test_output_width import write_run

    run_dir = write_run(tmp_path / "run")
    fig = bytes_figure(live_records(run_dir / "metrics.jsonl"))
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches if p.get_height() > 0]
    assert bars and not any(legend.overlaps(bar) for bar in bars)


def test_image_check_says_what_it_does_before_the_long_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import testkit.image_check

    def long_build(*args: object, **kwargs: object) -> None:
        raise UserError("stopped here by the test")

    monkeypatch.setattr(testkit.image_check, "build_rootfs", long_build)
    code = testkit.image_check.main(["cpu-debian"])
    out, err = capsys.readouterr()
    assert code == 2 and "stopped here by the test" in err
    first = out.splitlines()[0]
    assert first.startswith("... cpu-debian: every step's output goes to")
