"""A replay trains for real: the kit's own client function runs in-process behind the
simulated executor, returns the adapter it would return anywhere, and reports virtual
times. A tiny model and a hand-written data set keep it to seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crossfl.client import tasks
from crossfl.clock import VirtualClock
from crossfl.simulate.cache import ResultCache
from crossfl.simulate.executor import InstantExecutor, SimulatedSiteExecutor
from crossfl.simulate.scenario import Scenario
from crossfl.tiny_model import TinyModelSpec, build_tiny

pytestmark = pytest.mark.slow  # real training in replays (`make test-fast` leaves them out)

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def records() -> list[dict[str, str]]:
    rows = []
    for n in range(1, 13):
        smiles = "C" * n + "O"
        rows.append(
            {
                "input": f"How many carbons does <SMILES> {smiles} </SMILES> have?",
                "output": f"<NUMBER> {n} </NUMBER>",
                "raw_input": smiles,
                "raw_output": str(n),
                "task": "property_prediction-carbons",
                "split": "train",
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("simtrain")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records()))
    spec = TinyModelSpec(
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position=96,
        pretrain_steps=40,
        pretrain_batch=8,
        pretrain_seq_len=32,
        seed=0,
        threads=1,
    )
    return Path(build_tiny(data, work / "tiny", spec).out), data


def train_payload(model: Path, data: Path, rnd: int) -> dict[str, Any]:
    return {
        "model_path": str(model),
        "data_path": str(data),
        "adapter": None,
        "local_steps": 3,
        "batch_size": 4,
        "lr": 5e-3,
        "max_length": 64,
        "lora": dict(LORA),
        "dtype": "float32",
        "adapter_dtype": "float32",
        "seed": 1,
        "round": rnd,
        "torch_threads": 1,
        "max_samples": None,
    }


SCENARIO = Scenario.model_validate(
    {
        "name": "t",
        "facilities": {
            "hpc": {
                "queues": {"q": {"wait": {"model": "fixed", "wait_s": 600.0, "assumption": "test"}}}
            }
        },
        "sites": [
            {
                "name": "a",
                "facility": "hpc",
                "queue": "q",
                "speed": {
                    "seconds_per_step": 40.0,
                    "load_cold_s": 90.0,
                    "load_warm_s": 1.0,
                    "assumption": "test",
                },
            }
        ],
    }
)


def test_replay_runs_the_real_client_and_reports_virtual_times(tiny: tuple[Path, Path]) -> None:
    model, data = tiny
    direct = tasks.train_round(train_payload(model, data, 1))
    clock, cache = VirtualClock(), ResultCache()
    ex = SimulatedSiteExecutor("a", SCENARIO.sites[0], SCENARIO, clock, seed=0, cache=cache)
    result = clock.result(ex.submit(tasks.train_round, train_payload(model, data, 1)))
    assert result["adapter"] == direct["adapter"]  # real training, same adapter
    assert result["train_loss"] == direct["train_loss"] and result["steps"] == 3
    assert result["timings"]["train_s"] == 120.0 and result["timings"]["load_s"] == 90.0
    assert result["started_at"] == 600.0 and result["finished_at"] == 810.0
    again = clock.result(ex.submit(tasks.train_round, train_payload(model, data, 1)))
    assert again["simulated"]["reused_result"] and again["adapter"] == direct["adapter"]
    assert again["cache_hit"] is True and again["timings"]["load_s"] == 1.0
    other = clock.result(ex.submit(tasks.train_round, train_payload(model, data, 2)))
    assert not other["simulated"]["reused_result"] and other["adapter"] != direct["adapter"]
    assert (cache.hits, cache.misses) == (1, 2)
    ex.shutdown()


def test_evaluation_runs_for_real_at_no_virtual_cost(tiny: tuple[Path, Path]) -> None:
    model, data = tiny
    payload = {
        "model_path": str(model),
        "data_path": str(data),
        "adapter": None,
        "batch_size": 8,
        "max_length": 64,
        "dtype": "float32",
        "max_samples": 8,
        "generate_max_new_tokens": 4,
        "generate_samples": 0,
        "torch_threads": 1,
    }
    clock = VirtualClock()
    future = InstantExecutor().submit(tasks.evaluate, payload)
    assert future.done() and future.result()["val_loss"] > 0 and clock.now() == 0.0
