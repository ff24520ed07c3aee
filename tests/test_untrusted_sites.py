"""A site is not trusted: whole runs on the real engine with a malicious site beside an honest
one. What a site sends back is read as data (a planted pickle, /dev/zero, a FIFO, a link, a
path through `..`, an oversized file: each refused in one line naming the site, recorded as
rejected, and the run goes on); its weight is bounded by what the server knows of its data;
one or two updates are screened against the global; the layout is the base adapter's, not the
first arrival's; and a new global that is not finite never replaces the last good one."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from testkit.gate import wait_for
from testkit.scratch_project import make_project

from crossfl.client import probes
from crossfl.client.encoding import load_records
from crossfl.endpoints import SHELL_RESULTS, LocalEngineExecutor
from crossfl.server.dispatch import DispatchPolicy
from crossfl.server.driver_base import DriverBase, RunFailed
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import run_experiment
from crossfl.server.transport import TaskFns
from test_server_runs import experiment_file, records, run_dir_of

pytestmark = pytest.mark.slow  # every test here runs a federation on the real engine

ROOT = Path(__file__).resolve().parents[1]
PROBES = TaskFns(train=probes.faulty_train, evaluate=probes.noop_evaluate)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("untrusted-project"), ROOT)


@pytest.fixture
def here(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CROSSFL_ROOT", str(project))
    return project


def probe_data(here: Path, name: str) -> str:
    path = here / "probe" / f"{name}.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_text('{"input": "x", "output": "y"}\n')
    return str(path)


def by_site_round(run_dir: Path) -> dict[tuple[str, int], dict[str, Any]]:
    return {(t["site"], t["round"]): t for t in records(run_dir, "task")}


def lines_of(out: io.StringIO, site: str) -> list[str]:
    return [ln for ln in out.getvalue().splitlines() if f"site {site} rejected:" in ln]


# ------------------------------------------------------------------ results are data


def test_what_a_site_sends_back_is_read_as_data_or_refused(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mallory's endpoint answers with a dill pickle whose __reduce__ would run a command on
    the server; eve names, one a round, /dev/zero, a FIFO she made at her result path, a link
    there to /dev/zero, a path through `..` out of her result directory, and a 64 MiB file.
    Each is refused in one line naming the site, recorded as rejected with the reason; the
    run goes on with the honest site's updates and nothing of mallory's runs."""
    real_init = LocalEngineExecutor.__init__

    def init(self: LocalEngineExecutor, site: str, *args: Any, **kwargs: Any) -> None:
        real_init(self, site, *args, **kwargs)
        if site == "mallory":  # a compromised endpoint pickles, whatever it is asked
            self.result_serializers = SHELL_RESULTS

    monkeypatch.setattr(LocalEngineExecutor, "__init__", init)
    observed: list[tuple[str, str]] = []  # what the dispatch policy saw come back
    real_observe = DispatchPolicy.observe

    def observe(self: DispatchPolicy, record: Any) -> None:
        observed.append((record.site, record.status))
        real_observe(self, record)

    monkeypatch.setattr(DispatchPolicy, "observe", observe)
    mallory = probe_data(here, "m-planted")
    exp, path = load_experiment(
        experiment_file(
            here,
            name="refused",
            rounds=len(probes.WRONG_FILES),
            sites=[
                {"name": "honest", "site": "local"},
                {"name": "mallory", "site": "local", "data_path": mallory},
                {
                    "name": "eve",
                    "site": "local",
                    "data_path": probe_data(here, "e-rotate"),
                    "transport": {"mode": "shared_fs"},
                },
            ],
            transport={"mode": "inline"},
            faults={"park_after": 10},
        )
    )
    out = io.StringIO()
    run_dir = run_experiment(exp, path, Console(file=out, width=1000), fns=PROBES)
    by = by_site_round(run_dir)
    rounds = range(1, len(probes.WRONG_FILES) + 1)
    assert all(by[("honest", r)]["status"] == "ok" for r in rounds)
    assert [a["sites"] for a in records(run_dir, "aggregation")] == [["honest"]] * len(rounds)
    for r in rounds:
        m = by[("mallory", r)]
        assert m["status"] == "rejected" and m["attempts"] == 1, m
        assert m["reason"].startswith("site mallory sent a result that is not JSON data"), m
    assert not Path(f"{mallory}.pwned").exists(), "the planted payload ran on the server"
    # refused unread, the site is still free again for the dispatch policy
    assert observed.count(("mallory", "rejected")) == len(rounds), observed
    expected = {
        "devzero": "named '/dev/zero' for its adapter, not the result file its task gave",
        "fifo": "is a FIFO; refused unread",
        "symlink": "is a symbolic link; refused unread",
        "dotdot": "/../../escape.safetensors' for its adapter, not the result file",
        "oversize": "holds over",
    }
    for r, kind in zip(rounds, probes.WRONG_FILES, strict=True):
        e = by[("eve", r)]
        assert e["status"] == "rejected" and "site eve" in e["reason"], e
        assert expected[kind] in e["reason"], (kind, e["reason"])
    assert (run_dir / "escape.safetensors").is_file()  # eve's file outside: never read
    for site, count in (("mallory", len(rounds)), ("eve", len(rounds))):
        shown = lines_of(out, site)
        assert len(shown) == count, out.getvalue()
    assert json.loads((run_dir / "checkpoint" / "state.json").read_text())["finished"] is True


# ------------------------------------------------------------------ poisoning


def test_weights_are_bounded_and_one_or_two_updates_are_screened(here: Path) -> None:
    """inflated claims a billion samples where its entry declares 5: it is weighed at 5. With the
    median rule off (fewer than three updates would never reach it), huge (values of 3e38,
    finite) is refused against the global's own norm, and nan as non-finite."""
    exp, path = load_experiment(
        experiment_file(
            here,
            name="poison",
            rounds=2,
            sites=[
                {"name": "honest", "site": "local"},
                {
                    "name": "inflated",
                    "site": "local",
                    "data_path": probe_data(here, "i-inflated"),
                    "num_samples": 5,  # declared: the probe's data is not SMolInstruct
                },
                {"name": "huge", "site": "local", "data_path": probe_data(here, "u-huge")},
                {"name": "nan", "site": "local", "data_path": probe_data(here, "n-nan")},
            ],
            transport={"mode": "inline"},
            update_checks={"max_distance_factor": None},
            faults={"park_after": 10},
        )
    )
    run_dir = run_experiment(exp, path, Console(width=200), fns=PROBES)
    by = by_site_round(run_dir)
    partition = len(load_records(str(run_dir / "data" / "honest.jsonl"), None))
    for r in (1, 2):
        assert by[("honest", r)]["status"] == "ok" and by[("honest", r)]["weighed_samples"] is None
        assert partition > 10  # the honest site's 10 reported samples are within its size
        inflated = by[("inflated", r)]
        assert inflated["status"] == "ok" and inflated["num_samples"] == 10**9
        assert inflated["weighed_samples"] == 5
        huge = by[("huge", r)]
        assert huge["status"] == "rejected" and "x its norm" in huge["reason"], huge
        assert by[("nan", r)]["status"] == "rejected" and "non-finite" in by[("nan", r)]["reason"]
    assert all(a["sites"] == ["honest", "inflated"] for a in records(run_dir, "aggregation"))


def test_a_single_huge_update_is_screened(here: Path) -> None:
    """One site, one update a round: nothing to compare it with but the global."""
    exp, path = load_experiment(
        experiment_file(
            here,
            name="alone",
            rounds=1,
            sites=[{"name": "huge", "site": "local", "data_path": probe_data(here, "u-huge")}],
            transport={"mode": "inline"},
        )
    )
    with pytest.raises(RunFailed, match="no site returned an update"):
        run_experiment(exp, path, Console(width=200), fns=PROBES)
    (task,) = records(run_dir_of(here, "alone"), "task")
    assert task["status"] == "rejected" and "x its norm" in task["reason"], task


def test_the_layout_is_the_base_adapters_not_the_first_arrival(here: Path) -> None:
    """shapes answers first, with another layout: it is rejected, and the honest site's update
    (held back until shapes' was screened) is aggregated."""
    honest = probe_data(here, "h-waits")  # waits for the file `gate` beside it
    gate = Path(honest).with_name("gate")
    gate.unlink(missing_ok=True)

    def screened() -> bool:
        found = list((here / "runs").glob("first-*/metrics.jsonl"))
        return bool(found) and any(
            json.loads(ln).get("site") == "shapes" for ln in found[0].read_text().splitlines()
        )

    def open_gate() -> None:
        wait_for("shapes' update to be screened", screened, limit_s=600)
        gate.touch()

    opener = threading.Thread(target=open_gate, daemon=True)
    opener.start()
    exp, path = load_experiment(
        experiment_file(
            here,
            name="first",
            rounds=1,
            sites=[
                {"name": "honest", "site": "local", "data_path": honest},
                {"name": "shapes", "site": "local", "data_path": probe_data(here, "s-shapes")},
            ],
            transport={"mode": "inline"},
        )
    )
    run_dir = run_experiment(exp, path, Console(width=200), fns=PROBES)
    opener.join(timeout=60)
    by = by_site_round(run_dir)
    assert by[("shapes", 1)]["status"] == "rejected", by[("shapes", 1)]
    assert "wrong shape" in by[("shapes", 1)]["reason"]
    assert by[("honest", 1)]["status"] == "ok", by[("honest", 1)]
    assert by[("honest", 1)]["received_at"] > by[("shapes", 1)]["received_at"]
    assert [a["sites"] for a in records(run_dir, "aggregation")] == [["honest"]]


def test_a_global_that_goes_non_finite_never_replaces_the_last_good_one(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """huge's values (3e38) pass screening set off by the user; FedAvgM's server step (lr 3)
    takes their mean past float32's range. Each round's new global is refused, the strategy
    goes back to its checkpoint (the dispatch policy plans with that one), the round's timer
    starts again, and the run ends with the last good global (version 0)."""
    refusals: list[tuple[bool, bool]] = []
    real_accept = DriverBase.accept_global

    def accept_global(self: DriverBase, *args: Any) -> bool:
        before = self.strategy
        taken = real_accept(self, *args)
        if not taken:
            refusals.append(
                (
                    self.strategy is not before and self.dispatch.strategy is self.strategy,
                    self.dispatch.last_aggregation_at is not None,
                )
            )
        return taken

    monkeypatch.setattr(DriverBase, "accept_global", accept_global)
    exp, path = load_experiment(
        experiment_file(
            here,
            name="overflow",
            rounds=2,
            sites=[
                {"name": "honest", "site": "local"},
                {"name": "huge", "site": "local", "data_path": probe_data(here, "u-huge")},
            ],
            transport={"mode": "inline"},
            strategy={"name": "fedavgm", "kwargs": {"server_lr": 3.0, "weighting": "equal"}},
            update_checks={"max_distance_factor": None, "max_relative_distance": None},
        )
    )
    run_dir = run_experiment(exp, path, Console(width=200), fns=PROBES)
    refused = records(run_dir, "refused_global")
    assert [(r["round"], r["version"]) for r in refused] == [(1, 0), (2, 0)]
    assert refusals == [(True, True), (True, True)]
    assert all("non-finite" in r["reason"] and r["sites"] == ["honest", "huge"] for r in refused)
    assert not records(run_dir, "aggregation")
    final = load_file(run_dir / "final_adapter" / "adapter_model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in final.values())
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["version"] == 0 and state["finished"] is True
