"""Rendering: every site's endpoint files load with the endpoint's own loader, the template
renders for valid options and refuses invalid ones, rendering is atomic, local runs a task."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import yaml

from conftest import run_on_engine
from crossfl import render, sites
from crossfl.errors import UserError

ALL = sites.list_sites()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sites")
    test_overrides = Path(__file__).parent / "golden" / "overrides"
    result = {}
    for name in ALL:
        ov = test_overrides / f"{name}.yaml"
        site = sites.load_site(name, overrides=ov if ov.is_file() else None)
        result[name] = render.render_site(site, out)
    return result


def test_catalog_has_the_sites():
    for name in ("local",):
        assert name in ALL


@pytest.mark.parametrize("name", ALL)
def test_core_config_loads(rendered, name):
    from globus_compute_endpoint.endpoint.config import CoreEndpointConfig
    from globus_compute_endpoint.endpoint.config.utils import load_config_yaml
    cfg = load_config_yaml((rendered[name] / "endpoint" / "config.yaml").read_text())
    assert isinstance(cfg, CoreEndpointConfig)
    assert "crossfl" in cfg.display_name


@pytest.mark.parametrize("name", ALL)
def test_example_builds_engine(rendered, name, stub_interfaces):
    from globus_compute_endpoint.endpoint.config import UserEndpointConfig
    from globus_compute_endpoint.engines import GlobusComputeEngine
    text = (rendered[name] / "endpoint" / "user_config.example.yaml").read_text()
    cfg = render.load_user_config(text)
    assert isinstance(cfg, UserEndpointConfig)
    assert isinstance(cfg.engine, GlobusComputeEngine)
    assert cfg.engine.executor.provider is not None
    assert cfg.engine.executor.provider.launcher is not None


@pytest.mark.parametrize("name", ALL)
def test_template_keeps_endpoint_variables(rendered, name):
    text = (rendered[name] / "endpoint" / "user_config_template.yaml.j2").read_text()
    assert "{{ (worker_init | default(" in text
    assert "<<" not in text and "<%" not in text


@pytest.mark.parametrize("name", ALL)
def test_refuses_unknown_and_ill_typed_options(rendered, name):
    with pytest.raises(UserError, match="unknown option"):
        render.render_user_config(rendered[name], {"no_such_option": 1})
    with pytest.raises(UserError, match="worker_init"):
        render.render_user_config(rendered[name], {"worker_init": 7})


def test_local_options_render_and_quote(rendered, stub_interfaces):
    text = render.render_user_config(
        rendered["local"], {"max_workers_per_node": 3,
                            "worker_init": 'echo "a b"\nexport X=1 # }}"'})
    data = yaml.safe_load(text)
    assert data["engine"]["max_workers_per_node"] == 3
    assert data["engine"]["provider"]["worker_init"] == 'echo "a b"\nexport X=1 # }}"'
    assert data["engine"]["provider"]["type"] == "LocalProvider"
    cfg = render.load_user_config(text)
    assert cfg.engine.executor.max_workers_per_node == 3


def test_local_refuses_bad_worker_count(rendered):
    with pytest.raises(UserError) as info:
        render.render_user_config(rendered["local"], {"max_workers_per_node": 0})
    assert info.value.field == "max_workers_per_node"
    assert ">= 1" in info.value.render()


def test_schema_lists_template_variables(rendered):
    schema = json.loads((rendered["local"] / "endpoint" / "user_config_schema.json").read_text())
    assert set(schema["properties"]) == {"max_workers_per_node", "worker_init"}
    assert schema["properties"]["max_workers_per_node"]["default"] == 1
    assert schema["properties"]["worker_init"]["default"] == ""


def test_local_engine_runs_a_task(rendered, tmp_path):
    text = render.render_user_config(rendered["local"], {"max_workers_per_node": 1})
    cfg = render.load_user_config(text)
    assert run_on_engine(cfg.engine, tmp_path, platform.node, timeout=120) == platform.node()


def test_default_out_root_is_build_sites(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSFL_ROOT", str(tmp_path))
    (tmp_path / "deploy" / "sites").mkdir(parents=True)
    (tmp_path / "deploy" / "sites" / "local.yaml").write_text(
        (REPO / "deploy" / "sites" / "local.yaml").read_text())
    monkeypatch.setattr(render.paths, "templates_dir", lambda: REPO / "site_templates")
    out = render.render_site("local")
    assert out == tmp_path / "build" / "sites" / "local"
    assert (out / "endpoint" / "user_config.example.yaml").is_file()


REPO = Path(__file__).resolve().parents[1]


def test_failed_render_keeps_previous(tmp_path, monkeypatch):
    good = render.render_site("local", tmp_path)
    before = {p.name: p.read_bytes() for p in (good / "endpoint").iterdir()}

    def broken(*a, **k):
        raise UserError("boom")
    monkeypatch.setattr(render, "_render_with_endpoint", broken)
    with pytest.raises(UserError, match="boom"):
        render.render_site("local", tmp_path)
    after = {p.name: p.read_bytes() for p in (good / "endpoint").iterdir()}
    assert before == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local"]


def test_failed_first_render_leaves_nothing(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise UserError("boom")
    monkeypatch.setattr(render, "_render_with_endpoint", broken)
    with pytest.raises(UserError):
        render.render_site("local", tmp_path)
    assert list(tmp_path.iterdir()) == []
