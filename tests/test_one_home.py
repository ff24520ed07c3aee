"""Concepts that had two or three homes now have one (tests/test_house.py checks that no
second copy is written in src/); here, the former callers agree through it: the experiment,
the task, the model cache and the server's adapter_config.json describe one peft LoRA config;
the FedQueue and FedAsync discounts are one formula; the evaluator and the data builder read
answers alike; the probes and training report who ran a task alike; metrics.jsonl lines are
whole however a writer died."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from peft import LoraConfig

from crossfl import atomic
from crossfl.client import evaluate, probes
from crossfl.client.contract import LoraSpec, TrainTask, TrainTimings, train_result
from crossfl.data import smolinstruct
from crossfl.server.driver_base import peft_adapter_config
from crossfl.server.experiment import Experiment
from crossfl.server.records import AggregationRecord
from crossfl.server.strategies import get_strategy
from crossfl.server.strategies.staleness import StalenessParams
from crossfl.server.telemetry import MetricsLog, live_records, read_metrics

LORA = {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["v_proj", "q_proj"]}


# ---------------------------------------------------------------- one LoRA spec


def test_the_experiments_lora_section_is_the_tasks_lora_spec() -> None:
    exp = Experiment.model_validate(
        {
            "name": "x",
            "model": {"path": "/m"},
            "data": {"train": "/t.jsonl", "validation": "/v.jsonl"},
            "sites": [{"name": "east", "site": "local"}],
            "lora": LORA,
        }
    )
    assert isinstance(exp.lora, LoraSpec)
    assert exp.lora == LoraSpec.from_wire(LORA)


def test_the_servers_adapter_config_is_the_config_the_sites_build(tmp_path: Path) -> None:
    """The server writes adapter_config.json as data (no peft); peft reads it back as the
    LoraConfig a site built for the same settings, and the target modules' order does not
    make another config (the model cache rebuilds nothing for it)."""
    spec = LoraSpec.from_wire(LORA)
    config = peft_adapter_config(spec, "/models/tiny")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    read = LoraConfig.from_pretrained(str(tmp_path))
    built = spec.peft_config()
    for key in spec.peft_options():
        assert getattr(read, key) == getattr(built, key), key
    assert read.base_model_name_or_path == "/models/tiny"
    reordered = LoraSpec.from_wire({**LORA, "target_modules": ["q_proj", "v_proj"]})
    assert reordered.peft_options() == spec.peft_options()
    assert reordered.peft_config().to_dict() == built.to_dict()


# ---------------------------------------------------------------- one staleness discount


@pytest.mark.parametrize("fn", ["constant", "harmonic", "exponential"])
def test_fedqueue_discounts_staleness_as_fedasync_does(fn: str) -> None:
    for beta in (0.3, 1.7):
        queue = get_strategy("fedqueue", staleness_fn=fn, beta=beta)
        fedasync = get_strategy("fedasync", staleness_fn=fn, a=beta)
        for u in range(6):
            expected = StalenessParams(staleness_fn=fn, a=beta).discount(u)
            assert queue.discount(u) == expected == fedasync.params.discount(u)
    assert get_strategy("fedqueue", staleness_fn="harmonic", beta=0.5).discount(2) == 0.5


# ---------------------------------------------------------------- one answer parser


def test_the_evaluator_reads_answers_with_the_data_modules_parser() -> None:
    assert evaluate.answer_of is smolinstruct.answer_of
    record_output = "It is <MOLFORMULA> C2H6O </MOLFORMULA> ."
    assert smolinstruct.answer_of(record_output) == "C2H6O"
    assert smolinstruct.answer_of("<MOLFORMULA> C2H6O") == "C2H6O"  # generation cut short
    assert smolinstruct.answer_of("<A> x </A> <B> y </B>") == "x"
    assert smolinstruct.answer_of("  no tag ") == "no tag"


# ---------------------------------------------------------------- one TrainResult builder


def test_the_probes_and_training_report_who_ran_a_task_alike() -> None:
    started = time.time()
    built = train_result(
        b"adapter",
        num_samples=3,
        losses=[2.0, 1.0, 0.0],
        timings=TrainTimings(load_s=0.0, train_s=0.1, serialize_s=0.0),
        started_at=started,
        cache_hit=False,
        ranks=2,
    )
    assert (built.train_loss, built.first_loss, built.steps) == (1.0, 2.0, 3)
    assert built.ranks == 2 and built.started_at <= built.finished_at
    task = TrainTask(model_path="/m", data_path="/d.jsonl", local_steps=4, batch_size=1, lr=1e-3)
    probe = probes._train_result(task, b"adapter", started, num_samples=10)
    assert (probe.train_loss, probe.first_loss, probe.steps) == (1.0, 1.0, 4)
    who = (socket.gethostname(), os.getpid(), sys.executable)
    assert (built.host, built.pid, built.python) == who == (probe.host, probe.pid, probe.python)


# ---------------------------------------------------------------- atomic JSONL


def test_a_metrics_line_after_a_cut_one_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    record = AggregationRecord(
        round=1, version=1, driver="sync", sites=["a"], elapsed_s=1.0, staleness={"a": 0}
    )
    log.write(record)
    with path.open("a") as fh:
        fh.write('{"kind": "task", "rou')  # what a killed writer left
    log.write(record)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[0] == lines[2] and path.read_text().endswith("\n")
    assert live_records(path) == [record, record]
    assert len(read_metrics(path)) == 2


def test_a_jsonl_append_is_one_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def counted(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(atomic.os, "write", counted)
    atomic.append_jsonl(tmp_path / "x.jsonl", '{"a": 1}')
    atomic.append_jsonl(tmp_path / "x.jsonl", '{"a": 2}')
    assert writes == [b'{"a": 1}\n', b'{"a": 2}\n']
    assert (tmp_path / "x.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'


def test_whole_jsonl_files_are_swapped_in_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    atomic.write_jsonl_files({a: ['{"x": 1}'], b: ['{"y": 1}']})
    assert a.read_text() == '{"x": 1}\n' and b.read_text() == '{"y": 1}\n'

    def lines():  # the second file's records fail half-way
        yield '{"y": 2}'
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_jsonl_files({a: ['{"x": 2}'], b: lines()})
    assert a.read_text() == '{"x": 1}\n' and b.read_text() == '{"y": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]
