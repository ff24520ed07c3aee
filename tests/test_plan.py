"""crossfl.server.plan: the driver follows the strategy unless told; the shard setting
reaches every task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from testkit.plans import experiment, plan_of

from crossfl.errors import UserError
from crossfl.server.experiment import Experiment
from crossfl.server.plan import driver_kind

ROOT = Path(__file__).resolve().parents[1]


def test_driver_follows_the_strategy_unless_told(tmp_path: Path) -> None:
    assert driver_kind(experiment(tmp_path)) == "sync"
    assert driver_kind(experiment(tmp_path, strategy={"name": "fedbuff"})) == "async"
    assert driver_kind(experiment(tmp_path, driver="async")) == "async"
    with pytest.raises(UserError) as info:
        driver_kind(experiment(tmp_path, strategy={"name": "fedasync"}, driver="sync"))
    assert info.value.field == "driver"
    with pytest.raises(UserError) as info:
        driver_kind(experiment(tmp_path, max_updates=10))
    assert info.value.field == "max_updates"
    assert (
        driver_kind(experiment(tmp_path, strategy={"name": "fedbuff"}, max_updates=10)) == "async"
    )


def test_shard_is_asked_for_per_experiment_and_per_site(tmp_path: Path) -> None:
    """training.shard reaches every task; a site entry's own training.shard wins."""
    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "local-demo.yaml").read_text())
    raw["training"] = {**raw.get("training", {}), "shard": "always"}
    raw["sites"][1]["training"] = {**raw["sites"][1].get("training", {}), "shard": "never"}
    plan = plan_of(Experiment.model_validate(raw), {"alpha", "beta", "gamma"})
    shards = {
        s.name: plan.train_task(s.name, "/d", plan.client_plan(s.name), 1).shard
        for s in plan.experiment.sites
    }
    assert shards == {"alpha": "always", "beta": "never", "gamma": "always"}
