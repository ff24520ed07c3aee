"""A small scratch project for runs on this machine (tests, benchmarks): the real site catalog
and templates, chemistry data built with RDKit and a tiny Llama built offline, and experiment
files with small defaults. Point CROSSFL_ROOT at the directory to run in it.

The data and model are built once per process for each size asked for, into a private
directory, and copied into every project that asks for the same size again (the builds are
seeded, so a copy is what a new build would write)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from crossfl.paths import project_root

_BUILT: dict[tuple[int, int], Path] = {}


def _assets(molecules: int, pretrain_steps: int) -> Path:
    """data/ and model/ of this size, built on first use."""
    from crossfl.data.chem import build_chem
    from crossfl.tiny_model import TinyModelSpec, build_tiny

    key = (molecules, pretrain_steps)
    if key in _BUILT:
        return _BUILT[key]
    where = Path(tempfile.mkdtemp(prefix="crossfl-scratch-"))
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    build_chem(where / "data", seed=0, max_molecules=molecules)
    spec = TinyModelSpec(
        vocab_size=400,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        pretrain_steps=pretrain_steps,
        pretrain_batch=8,
        threads=1,
    )
    build_tiny(where / "data" / "train.jsonl", where / "model", spec)
    _BUILT[key] = where
    return where


def make_project(
    root: Path, source: Path | None = None, *, molecules: int = 120, pretrain_steps: int = 5
) -> Path:
    """Fill ``root`` with deploy/sites (copied), site_templates (linked), data/ and model/."""
    source = source or project_root()
    (root / "deploy").mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "deploy" / "sites", root / "deploy" / "sites", dirs_exist_ok=True)
    if not (root / "site_templates").exists():
        (root / "site_templates").symlink_to(source / "site_templates")
    built = _assets(molecules, pretrain_steps)
    for part in ("data", "model"):
        shutil.copytree(built / part, root / part, dirs_exist_ok=True)
    return root


def write_experiment(root: Path, name: str, **changes: Any) -> Path:
    """An experiment file with small settings (two local sites, 3 rounds of 2 steps), and a task
    timeout no busy machine reaches."""
    exp: dict[str, Any] = {
        "name": name,
        "model": {"path": "model"},
        "data": {"train": "data/train.jsonl", "validation": "data/validation.jsonl"},
        "sites": [{"name": "east", "site": "local"}, {"name": "west", "site": "local"}],
        "rounds": 3,
        "training": {
            "local_steps": 2,
            "batch_size": 4,
            "lr": 0.005,
            "max_length": 96,
            "torch_threads": 1,
        },
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "evaluation": {"max_samples": 8, "batch_size": 8, "generate_max_new_tokens": 4},
        "task_timeout_s": 3600,  # a busy machine is slow, not broken: no task may time out
    }
    exp.update(changes)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path
