"""Facility rules as data: `crossfl.sites.check_request` refuses, in one line naming the site,
the rule and the fix, what the published limits make impossible (node-count bins, minimum
nodes and walltime, jobs per user, production on a debug QOS, part of a node); render's
user-config path calls it first. The endpoint's own JSON schema checks the options' forms
only: it never refuses a request check_request lets through, and keeps no second copy of the
limits. Every experiment in deploy/experiments asks only for what its sites allow."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from crossfl import render, sites
from crossfl.errors import UserError
from crossfl.schedulers.launchers import LAUNCHERS

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = Path(__file__).parent / "golden" / "overrides"


def site(name: str) -> sites.Site:
    ov = OVERRIDES / f"{name}.yaml"
    return sites.load_site(name, overrides=ov if ov.is_file() else None)


def refusal(name: str, options: dict, **kw) -> sites.RequestRefused:
    with pytest.raises(sites.RequestRefused) as info:
        sites.check_request(site(name), options, **kw)
    line = info.value.render()
    assert "\n" not in line and line.startswith(f"{name}: ") and "(fix: " in line
    return info.value


@pytest.mark.parametrize(
    "name, options, line",
    [
        (
            "polaris",
            {"queue": "debug", "walltime": "02:00:00"},
            "polaris: queue debug allows at most 01:00:00; asked 02:00:00 (fix: ask for at most "
            "01:00:00, or use queue capacity or preemptable)",
        ),
        (
            "polaris",
            {"queue": "prod", "nodes_per_block": 10, "walltime": "04:00:00"},
            "polaris: queue prod allows at most 03:00:00 for 10-24 nodes; asked 04:00:00 (fix: ask for "
            "at most 03:00:00, or use queue preemptable)",
        ),
        (
            "polaris",
            {"queue": "prod"},
            "polaris: queue prod needs at least 10 nodes; asked 1 (fix: nodes_per_block >= 10, or use "
            "queue capacity or debug or debug-scaling or preemptable)",
        ),
        (
            "polaris",
            {"walltime": "00:01:00"},
            "polaris: queue debug needs at least 00:05:00; asked 00:01:00 (fix: ask for at least "
            "00:05:00)",
        ),
        (
            "frontier",
            {"walltime": "04:00:00"},
            "frontier: partition batch allows at most 02:00:00 for 1-91 nodes; asked 04:00:00 (fix: "
            "ask for at most 02:00:00, or use partition extended)",
        ),
        (
            "frontier",
            {"qos": "debug"},
            "frontier: qos debug forbids production work, and a crossfl run is production work (fix: "
            "use qos normal)",
        ),
        (
            "frontier",
            {"queue": "extended", "nodes_per_block": 65},
            "frontier: partition extended allows at most 64 nodes; asked 65 (fix: nodes_per_block <= "
            "64, or use partition batch)",
        ),
        (
            "aurora",
            {"max_blocks": 2},
            "aurora: queue debug allows 1 job(s) per user in any state; asked max_blocks 2 (fix: "
            "max_blocks <= 1)",
        ),
        (
            "aurora",
            {"queue": "prod", "nodes_per_block": 1100, "walltime": "20:00:00"},
            "aurora: queue prod allows at most 18:00:00 for 1025-1999 nodes; asked 20:00:00 (fix: ask "
            "for at most 18:00:00)",
        ),
        (
            "aurora",
            {"queue": "debug-scaling"},
            "aurora: queue debug-scaling needs at least 2 nodes; asked 1 (fix: nodes_per_block >= 2, "
            "or use queue capacity or debug)",
        ),
        (
            "perlmutter",
            {"qos": "shared"},
            "perlmutter: qos shared gives a job part of a node (1 GPU, 32 CPUs) but this endpoint was "
            "rendered for whole nodes (fix: set qos: shared in deploy/sites/overrides/perlmutter.yaml, "
            "then render and deploy again)",
        ),
        (
            "polaris",
            {"queue": "gpu"},
            "polaris: queue gpu is not one of capacity, debug, debug-scaling, demand, preemptable, prod "
            "(fix: pick one of capacity, debug, debug-scaling, demand, preemptable, prod)",
        ),
    ],
)
def test_impossible_requests_are_one_line(name, options, line):
    assert refusal(name, options).render() == line


@pytest.mark.parametrize(
    "name, options",
    [
        ("polaris", {"queue": "capacity", "walltime": "02:00:00"}),
        ("polaris", {"queue": "prod", "nodes_per_block": 100, "walltime": "24:00:00"}),
        ("frontier", {"walltime": "02:00:00"}),  # bin 5 allows exactly 2 h
        ("frontier", {"nodes_per_block": 184, "walltime": "12:00:00"}),
        ("frontier", {"queue": "extended", "walltime": "24:00:00", "nodes_per_block": 64}),
        (
            "aurora",
            {"queue": "capacity", "walltime": "168:00:00", "nodes_per_block": 16, "max_blocks": 5},
        ),
        ("perlmutter", {"qos": "regular", "walltime": "48:00:00"}),
        ("local-slurm", {"walltime": "00:05:00"}),
        ("local", {"max_workers_per_node": 3}),
    ],
)
def test_possible_requests_pass(name, options):
    sites.check_request(site(name), options)


def test_debug_qos_is_only_refused_for_production():
    sites.check_request(site("frontier"), {"qos": "debug"}, production=False)
    assert refusal("perlmutter", {"qos": "debug", "walltime": "00:10:00"}).option == "qos"


def test_malformed_options_are_named():
    err = refusal("polaris", {"walltime": "1h"})
    assert err.option == "walltime" and "01:00:00" in err.fix
    err = refusal("frontier", {"nodes_per_block": 0})
    assert err.option == "nodes_per_block" and ">= 1" in err.fix


def test_render_user_config_refuses_before_the_endpoint(tmp_path):
    out = render.render_site(site("polaris"), tmp_path)
    with pytest.raises(UserError) as info:
        render.render_user_config(out, {"account": "P", "queue": "debug", "walltime": "02:00:00"})
    assert info.value.render().startswith("polaris: queue debug allows at most 01:00:00; asked")
    assert info.value.option == "walltime" and info.value.field is None


def test_a_shared_pilot_asks_for_part_of_a_node(tmp_path, stub_interfaces):
    """Perlmutter's shared QOS gives a job part of a node: the rendered pilot is not exclusive,
    asks for one GPU and its CPUs, and leaves Slurm's GPU binding to the one worker (per-device
    workers here; the MPI engine's one rank asks srun for the same)."""
    ov = tmp_path / "perlmutter.yaml"
    ov.write_text("account: m1_g\nqos: shared\nendpoint: {tasks: per-device}\n")
    shared = sites.load_site("perlmutter", overrides=ov)
    out = render.render_site(shared, tmp_path / "sites")
    engine = render.load_user_config(render.render_user_config(out, {}, site=shared)).engine
    provider = engine.executor.provider
    assert provider.exclusive is False and "--exclusive" not in provider.scheduler_options
    assert "#SBATCH --gpus-per-node=1" in provider.scheduler_options
    assert "#SBATCH --cpus-per-task=32" in provider.scheduler_options
    assert provider.launcher.overrides == "-c 32"
    assert engine.executor.available_accelerators == []
    assert engine.executor.max_workers_per_node == 1 and engine.executor.cpu_affinity == "none"
    with pytest.raises(UserError) as info:  # and no whole-node QOS at run time
        render.render_user_config(out, {"qos": "regular"}, site=shared)
    assert "rendered for part of a node" in info.value.render()
    schema = json.loads((out / "endpoint" / "user_config_schema.json").read_text())
    assert schema["properties"]["qos"]["enum"] == ["shared"]
    smoke = (out / "batch" / "smoke.sh").read_text()
    assert "--ntasks-per-node=1" in smoke and "--exclusive" not in smoke
    assert "bind_rank" not in smoke  # Slurm's own CUDA_VISIBLE_DEVICES stands
    ov.write_text("account: m1_g\nqos: shared\n")  # the catalog's MPI engine
    mpi = sites.load_site("perlmutter", overrides=ov)
    assert mpi.endpoint.tasks == "mpi" and mpi.ranks_per_node() == 1
    assert LAUNCHERS["srun"].rank_options(sites.binding(mpi), 1) == [
        "--cpus-per-task=32",
        "--gpus-per-task=1",
        "--gpu-bind=closest",
    ]


@pytest.mark.parametrize("name", ["frontier", "aurora", "polaris", "perlmutter", "local-slurm"])
def test_endpoint_schema_accepts_what_check_request_accepts(name, tmp_path):
    """check_request is the one rule engine: the endpoint's schema holds no second copy of the
    limits (no if/then rules), and never refuses a request check_request accepts; what
    check_request refuses, render's user-config path refuses first, in its one line."""
    s = site(name)
    out = render.render_site(s, tmp_path)
    schema = json.loads((out / "endpoint" / "user_config_schema.json").read_text())
    assert "allOf" not in schema and '"if"' not in json.dumps(schema)
    props = schema["properties"]
    walltimes = [
        "00:01:00",
        "00:05:00",
        "00:30:00",
        "01:00:00",
        "02:00:00",
        "03:00:01",
        "06:00:00",
        "12:00:00",
        "24:00:00",
        "48:00:00",
        "168:00:00",
    ]
    nodes = [1, 2, 3, 10, 24, 25, 64, 92, 256, 1100, 2000]
    key = "qos" if s.limits_by == "qos" else "queue"
    names = props[key]["enum"] if key in props else [None]
    checked = refused = 0
    for q in [*names, "absent"]:
        for wt in [*walltimes, None]:
            for n in [*nodes, None]:
                for blocks in (1, 2, None):
                    opts = {"account": s.account or "x_g"}
                    if q not in ("absent", None):
                        opts[key] = q
                    if wt is not None:
                        opts["walltime"] = wt
                    if n is not None:
                        opts["nodes_per_block"] = n
                    if blocks is not None:
                        opts["max_blocks"] = blocks
                    try:
                        sites.check_request(s, opts, production=False)
                        ok = True
                    except sites.RequestRefused:
                        ok = False
                    if ok:
                        assert jsonschema.Draft202012Validator(schema).is_valid(opts), opts
                    checked += 1
                    refused += not ok
    assert checked > 100 and refused > 0
    over = {"account": s.account or "x_g", "walltime": "168:00:00"}
    with pytest.raises(sites.RequestRefused):
        render.render_user_config(out, over, site=s)


@pytest.mark.parametrize(
    "path", sorted((REPO / "deploy" / "experiments").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_experiment_asks_what_its_sites_allow(path):
    exp = yaml.safe_load(path.read_text())
    for entry in exp["sites"]:
        sites.check_request(sites.load_site(entry["site"]), entry.get("user_options", {}))


def test_chem_lora_no_longer_asks_two_hours_of_debug():
    exp = yaml.safe_load((REPO / "deploy" / "experiments" / "chem-lora.yaml").read_text())
    polaris = next(e for e in exp["sites"] if e["site"] == "polaris")
    with pytest.raises(sites.RequestRefused, match="queue debug allows at most 01:00:00"):
        sites.check_request(
            sites.load_site("polaris"), {**polaris["user_options"], "queue": "debug"}
        )
