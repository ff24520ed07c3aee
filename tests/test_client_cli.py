"""`python -m crossfl.client run-task`: the direct client job's entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossfl.data.chem import build_chem
from crossfl.tiny_model import TinyModelSpec, build_tiny

pytestmark = pytest.mark.slow  # a client process per test (`make test-fast` leaves them out)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossfl.client", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_describe_writes_the_devices(tmp_path: Path) -> None:
    (tmp_path / "task.json").write_text(json.dumps({"task": "describe"}))
    proc = run("run-task", "task.json", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["device"] == "cpu" and result["backend"] == "cpu"


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"task": "fly"}', "task"),
        ('{"task": ', "line 1"),
        ('{"task": "evaluate", "adapter_path": "missing.safetensors"}', "adapter_path"),
    ],
)
def test_bad_task_files_are_one_line_exit_2(tmp_path: Path, content: str, field: str) -> None:
    (tmp_path / "task.json").write_text(content)
    proc = run("run-task", "task.json", "out.json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and field in proc.stderr
    assert not (tmp_path / "out.json").exists()


def test_train_round_then_evaluate_through_files(tmp_path: Path) -> None:
    build_chem(tmp_path / "data", max_molecules=40)
    spec = TinyModelSpec(
        vocab_size=300,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        pretrain_steps=0,
        threads=1,
    )
    build_tiny(tmp_path / "data" / "train.jsonl", tmp_path / "model", spec)
    common = {
        "model_path": str(tmp_path / "model"),
        "max_length": 64,
        "torch_threads": 1,
        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj"]},
    }
    (tmp_path / "train.json").write_text(
        json.dumps(
            {
                "task": "train_round",
                **common,
                "data_path": str(tmp_path / "data" / "train.jsonl"),
                "local_steps": 2,
                "batch_size": 2,
                "lr": 0.01,
            }
        )
    )
    proc = run("run-task", "train.json", "trained.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    trained = json.loads((tmp_path / "trained.json").read_text())
    assert trained["steps"] == 2 and (tmp_path / trained["adapter_path"]).stat().st_size > 0

    (tmp_path / "eval.json").write_text(
        json.dumps(
            {
                "task": "evaluate",
                **common,
                "data_path": str(tmp_path / "data" / "validation.jsonl"),
                "adapter_path": trained["adapter_path"],
                "max_samples": 4,
                "generate_max_new_tokens": 2,
            }
        )
    )
    proc = run("run-task", "eval.json", "evaluated.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "evaluated.json").read_text())["val_loss"] > 0
