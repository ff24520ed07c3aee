"""The experiment file: schema errors name the file, the field and the fix; the CLI exits 2
with one line and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from crossfl.errors import UserError
from crossfl.server.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "deploy" / "experiments" / "local-demo.yaml"


def write(tmp_path: Path, data: object, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_demo_experiment_loads() -> None:
    exp, path = load_experiment(DEMO)
    assert path == DEMO
    assert len(exp.sites) == 3 and exp.rounds >= 5
    assert exp.data.partition.scheme == "by_task"
    assert exp.eval_site == "alpha"


def test_named_experiment_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_ROOT", str(ROOT))
    exp, path = load_experiment("local-demo")
    assert path.name == "local-demo.yaml"


@pytest.mark.parametrize(
    ("mutate", "field", "fix"),
    [
        (lambda d: d.pop("model"), "model", "add model"),
        (lambda d: d.update(rounds=0), "rounds", "correct the value"),
        (lambda d: d.update(colour="red"), "colour", "remove it"),
        (lambda d: d["sites"][1].update(name="alpha"), "sites", "rename one"),
        (lambda d: d["training"].update(lr=-1), "training.lr", "correct the value"),
        (lambda d: d["sites"][0].update(sitee="local"), "sites[alpha].sitee", "remove it"),
        (
            lambda d: d["data"]["partition"].update(scheme="random"),
            "data.partition.scheme",
            "use 'iid'",
        ),
        (lambda d: d.update(evaluation={"site": "delta"}), "evaluation.site", "use one of alpha"),
    ],
)
def test_bad_fields_name_file_field_fix(tmp_path: Path, mutate, field: str, fix: str) -> None:
    data = demo()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(UserError) as info:
        load_experiment(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field
    assert fix in (err.fix or "")


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nsites: [unclosed\nrounds: 2\n")
    with pytest.raises(UserError) as info:
        load_experiment(path)
    assert info.value.field and info.value.field.startswith("line ")


def test_unknown_experiment_lists_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_ROOT", str(ROOT))
    with pytest.raises(UserError) as info:
        load_experiment("no-such-experiment")
    assert "local-demo" in (info.value.fix or "")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CROSSFL_ROOT=str(cwd))
    return subprocess.run(
        [sys.executable, "-m", "crossfl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_experiment_is_one_line_exit_2(tmp_path: Path) -> None:
    data = demo()
    data["training"]["batch_size"] = "eight"
    path = write(tmp_path, data)
    proc = run_cli("run", str(path), cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "training.batch_size" in proc.stderr and str(path) in proc.stderr


def test_cli_missing_model_is_reported_before_anything_starts(tmp_path: Path) -> None:
    """A missing model path: one line, on a line of its own, naming model.path and `make
    model`; exit 2; no engine started and no run directory left for `crossfl resume`."""
    (tmp_path / "deploy" / "sites").mkdir(parents=True)
    (tmp_path / "deploy" / "sites" / "local.yaml").write_text(
        (ROOT / "deploy" / "sites" / "local.yaml").read_text()
    )
    (tmp_path / "site_templates").symlink_to(ROOT / "site_templates")
    data = demo()
    data["model"]["path"] = "no/such/model"
    path = write(tmp_path, data)
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "model.path" in proc.stderr and "make model" in proc.stderr
    assert "local engine" not in proc.stdout, "an engine started before the check"
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_four_facility_experiment_loads_with_per_site_models(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crossfl.server.plan import site_path

    monkeypatch.setenv("CROSSFL_ROOT", str(ROOT))
    exp, _ = load_experiment(ROOT / "deploy" / "experiments" / "chem-lora.yaml")
    assert {s.site for s in exp.sites} == {"frontier", "aurora", "polaris", "perlmutter"}
    assert exp.lora.r == 16 and exp.training.adapter_dtype == "bfloat16"
    # facility paths travel as they are, each site its own model directory; a relative one is
    # refused (the facility's workers would resolve it elsewhere); this machine's become absolute
    polaris = exp.site_entry("polaris")
    assert site_path(polaris.model_path or "", False, "x") == "/eagle/PROJECT/models/Llama-2-7b-hf"
    assert site_path(exp.data.validation, False, "data.validation") == exp.data.validation
    with pytest.raises(UserError, match="absolute") as info:
        site_path("models/llama", False, "sites[polaris].model_path")
    assert info.value.field == "sites[polaris].model_path"
    assert site_path("build/models/tiny", True, "model.path") == str(
        ROOT / "build" / "models" / "tiny"
    )


def test_new_experiment_fields_validate(tmp_path: Path) -> None:
    exp, _ = load_experiment(ROOT / "deploy" / "experiments" / "local-async.yaml")
    assert exp.strategy.name == "fedasync" and len(exp.sites) == 3
    assert {s.training.local_steps for s in exp.sites} == {10, 30, 60}
    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "local-demo.yaml").read_text())
    bad = [
        ({"quorum": {"min_clients": 4}}, "quorum.min_clients"),
        ({"transport": {"mode": "ftp"}}, "transport.mode"),
        ({"transport": {"inline_limit_mb": 12}}, "transport.inline_limit_mb"),
        ({"faults": {"retries": -1}}, "faults.retries"),
        ({"driver": "sometimes"}, "driver"),
        (
            {"sites": [{"name": "a", "site": "local", "training": {"local_step": 3}}]},
            "sites[a].training.local_step",
        ),
        (
            {"sites": [{"name": "a", "site": "local", "transport": {"mode": "globus_transfer"}}]},
            "sites[a].transport.globus",
        ),
    ]
    for change, field in bad:
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({**raw, **change}))
        with pytest.raises(UserError) as info:
            load_experiment(path)
        assert info.value.field == field, (change, info.value)
