"""The run `make image-check` ends with: a two-site federation (the kit's own driver and
engines, the demo data and tiny model, two rounds) whose site starts every engine worker inside
the rootfs that crossfl.images.check built, through the engine's own container path
(`container.runtime: custom`, bubblewrap in the place of `apptainer run`)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import yaml
from rich.console import Console

from crossfl import paths
from crossfl.errors import UserError
from crossfl.images.check import SITE, write_site
from crossfl.images.layout import images_dir
from crossfl.server.experiment import load_experiment
from crossfl.server.lifecycle import run_experiment

DATA_DIR = "build/data/chem"  # `make data`
MODEL_DIR = "build/models/tiny-llama"  # `make model`


def federation_project(rootfs: Path) -> tuple[Path, Path]:
    """A project directory for the check's run: the catalog entry of the rootfs site, the
    templates, and an experiment over this checkout's demo data and tiny model (`make data
    model`), two sites, two rounds. Returns (project, experiment file)."""
    source = paths.project_root()
    data, model = source / DATA_DIR, source / MODEL_DIR
    if not (data / "train.jsonl").is_file() or not (model / "config.json").is_file():
        raise UserError(
            f"the image check trains the demo model on the demo data: "
            f"{DATA_DIR}/train.jsonl or {MODEL_DIR}/config.json is missing",
            fix="run `make data model` first (`make image-check` does)",
        )
    project = images_dir() / "image-check-project"
    shutil.rmtree(project / "runs", ignore_errors=True)  # the previous check's runs
    (project / "deploy" / "sites").mkdir(parents=True, exist_ok=True)
    templates = project / "site_templates"
    if not templates.exists():
        templates.symlink_to(source / "site_templates")
    write_site(project, rootfs, [str(project), str(data), str(model)])
    experiment = {
        "name": "image-check",
        "model": {"path": str(model)},
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl")},
        "sites": [{"name": "inside-a", "site": SITE}, {"name": "inside-b", "site": SITE}],
        "rounds": 2,
        "training": {
            "local_steps": 2,
            "batch_size": 4,
            "lr": 0.005,
            "max_length": 96,
            "max_samples": 64,
            "torch_threads": 1,
        },
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "evaluation": {"max_samples": 8, "batch_size": 8, "generate_max_new_tokens": 4},
        "task_timeout_s": 3600,  # a busy machine is slow, not broken
    }
    exp_file = project / "image-check.yaml"
    exp_file.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return project, exp_file


def run_federation(rootfs: Path, log: Path) -> dict:
    """Two sites, two rounds, every worker inside the rootfs. Returns the run directory and
    the interpreter each training task reported."""
    project, exp_file = federation_project(rootfs)
    before = os.environ.get("CROSSFL_ROOT")
    os.environ["CROSSFL_ROOT"] = str(project)
    console = Console(file=io.StringIO(), width=100, record=True)
    start = time.monotonic()
    try:
        experiment, exp_path = load_experiment(exp_file)
        run_dir = run_experiment(experiment, exp_path, console)
    finally:
        if before is None:
            os.environ.pop("CROSSFL_ROOT", None)
        else:
            os.environ["CROSSFL_ROOT"] = before
        with log.open("a") as handle:
            handle.write(f"==== federation\n{console.export_text()}\n")
    seconds = time.monotonic() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tasks = [r for r in records if r.get("kind") == "task"]
    return {
        "run_dir": str(run_dir),
        "seconds": seconds,
        "tasks": [
            {k: t.get(k) for k in ("round", "site", "status", "python", "host")} for t in tasks
        ],
        "rounds": [r for r in records if r.get("kind") == "round"],
    }
