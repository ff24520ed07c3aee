"""Run plans for tests, built without the checks (crossfl.server.plan.plan_run): the demo
experiment with changes, and a plan whose sites run here or elsewhere as told."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from crossfl.server.experiment import Experiment
from crossfl.server.plan import RunPlan, SitePlan
from crossfl.sites import load_site

ROOT = Path(__file__).resolve().parents[1]


def experiment(tmp_path: Path, **changes: Any) -> Experiment:
    raw = yaml.safe_load((ROOT / "deploy" / "experiments" / "local-demo.yaml").read_text())
    raw.update(changes)
    return Experiment.model_validate(raw)


def plan_of(exp: Experiment, here: set[str]) -> RunPlan:
    """A plan without the checks: sites in ``here`` run on this machine."""
    local = load_site("local")
    sites = {
        s.name: SitePlan(
            name=s.name,
            catalog=local,
            runs_here=s.name in here,
            model_path="/m",
            data_path="/d",
            shared_dir=s.transport.shared_dir,
            nodes=1,
            user_options={},
        )
        for s in exp.sites
    }
    return RunPlan(
        experiment=exp,
        source=Path("exp.yaml"),
        sites=sites,
        driver="sync",
        validation_path="/v",
        train_path=None,
    )
