"""The client: train_round / evaluate on a very small model and a hand-written SMolInstruct set."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from crossfl.client import model_cache, tasks
from crossfl.client.adapter_io import (
    LORA_METADATA_KEY,
    adapter_from_bytes,
    adapter_metadata,
    adapter_to_bytes,
)
from crossfl.client.contract import LoraSpec, TrainResult
from crossfl.client.device import describe_devices, select_device
from crossfl.client.encoding import batch_indices, encode_example
from crossfl.client.evaluate import pick_for_generation
from crossfl.data.smolinstruct import answer_of
from crossfl.errors import UserError
from crossfl.tiny_model import TinyModelSpec, build_tiny

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
LAYERS = 2
HIDDEN = 32


def adapter_of(result: dict[str, Any]) -> bytes:
    """The adapter bytes of a result as the wire carries it (JSON: base64 text)."""
    adapter = TrainResult.from_wire(result).adapter
    assert adapter is not None
    return adapter


def _formula(c: int, h: int, rest: str = "") -> str:
    return f"C{c if c > 1 else ''}H{h}{rest}"


def chem_records(split: str) -> list[dict[str, str]]:
    """Linear alkanes, alcohols and amines: formula and carbon-count questions."""
    rows: list[dict[str, str]] = []
    for n in range(1, 13):
        for smiles, formula in (
            ("C" * n, _formula(n, 2 * n + 2)),
            ("C" * n + "O", _formula(n, 2 * n + 2, "O")),
            ("C" * n + "N", _formula(n, 2 * n + 3, "N")),
        ):
            rows.append(
                {
                    "input": f"What is the molecular formula of <SMILES> {smiles} </SMILES> ?",
                    "output": f"<MOLFORMULA> {formula} </MOLFORMULA>",
                    "raw_input": smiles,
                    "raw_output": formula,
                    "task": "name_conversion-s2f",
                    "split": split,
                }
            )
            rows.append(
                {
                    "input": f"How many carbons does <SMILES> {smiles} </SMILES> have?",
                    "output": f"<NUMBER> {n} </NUMBER>",
                    "raw_input": smiles,
                    "raw_output": str(n),
                    "task": "property_prediction-carbons",
                    "split": split,
                }
            )
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client")


@pytest.fixture(scope="session")
def data(workdir: Path) -> Path:
    return write_jsonl(workdir / "train.jsonl", chem_records("train"))


@pytest.fixture(scope="session")
def model(workdir: Path, data: Path) -> Path:
    spec = TinyModelSpec(
        vocab_size=300,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=2,
        intermediate_size=64,
        max_position=128,
        pretrain_steps=150,
        pretrain_batch=8,
        pretrain_seq_len=32,
        seed=0,
        threads=1,
    )
    return Path(build_tiny(data, workdir / "tiny", spec).out)


def train_task(model: Path, data: Path, **changes: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
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
        "round": 0,
        "torch_threads": None,
        "max_samples": None,
    }
    task.update(changes)
    return task


def eval_task(model: Path, data: Path, **changes: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "model_path": str(model),
        "data_path": str(data),
        "adapter": None,
        "batch_size": 16,
        "max_length": 64,
        "dtype": "float32",
        "max_samples": None,
        "generate_max_new_tokens": 8,
        "generate_samples": 6,
        "torch_threads": None,
    }
    task.update(changes)
    return task


# ------------------------------------------------------------------ device


def test_select_device_is_cpu_here_and_honours_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROSSFL_DEVICE", raising=False)
    if not torch.cuda.is_available():
        assert select_device().type == "cpu"
    monkeypatch.setenv("CROSSFL_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    info = describe_devices()
    assert info["backend"] == "cpu" and info["device"] == "cpu" and info["count"] == 1


def test_device_override_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFL_DEVICE", "warp-drive")
    with pytest.raises(UserError, match="CROSSFL_DEVICE"):
        select_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("CROSSFL_DEVICE", "cuda")
        with pytest.raises(UserError, match="no cuda device"):
            select_device()


def test_rocm_build_reports_rocm(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossfl.client.device import backend_name

    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    assert backend_name(torch.device("cuda")) == "rocm"
    assert backend_name(torch.device("cpu")) == "cpu"


# ------------------------------------------------------------------ adapter bytes


def test_adapter_roundtrip_float32_and_bfloat16() -> None:
    gen = torch.Generator().manual_seed(0)
    state = {
        "b.lora_B.weight": torch.randn(6, 2, generator=gen),
        "a.lora_A.weight": torch.randn(2, 6, generator=gen),
    }
    back = adapter_from_bytes(adapter_to_bytes(state, "float32"))
    assert sorted(back) == sorted(state)
    for k in state:
        assert back[k].dtype == torch.float32 and torch.equal(back[k], state[k])
    half = adapter_from_bytes(adapter_to_bytes(state, "bfloat16", metadata={"k": "v"}))
    for k in state:
        assert half[k].dtype == torch.bfloat16
        assert torch.equal(half[k], state[k].to(torch.bfloat16))
    assert adapter_metadata(adapter_to_bytes(state, "bfloat16", metadata={"k": "v"})) == {"k": "v"}


def test_adapter_bytes_errors() -> None:
    with pytest.raises(UserError, match="safetensors"):
        adapter_from_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="use float32 or bfloat16"):
        adapter_to_bytes({"x": torch.zeros(1)}, "int8")


# ------------------------------------------------------------------ train_round


def test_train_round_result_and_adapter_shapes(model: Path, data: Path) -> None:
    out = tasks.train_round(train_task(model, data))
    assert out["steps"] == 3 and out["num_samples"] == len(chem_records("train"))
    assert math.isfinite(out["train_loss"]) and math.isfinite(out["first_loss"])
    assert set(out["timings"]) == {"load_s", "train_s", "serialize_s", "fetch_s", "store_s"}
    assert TrainResult.from_wire(out).adapter_path is None  # the result is the contract's
    assert out["device"] == "cpu" and out["pid"] > 0 and out["host"]
    assert out["started_at"] <= out["finished_at"]
    state = adapter_from_bytes(adapter_of(out))
    # 2 layers x (q_proj, v_proj) x (lora_A, lora_B), peft names without the adapter name
    assert len(state) == LAYERS * 2 * 2
    for name, t in state.items():
        assert ".default." not in name and t.dtype == torch.float32
        assert any(f".{m}." in name for m in LORA["target_modules"])
        if ".lora_A." in name:
            assert tuple(t.shape) == (LORA["r"], HIDDEN)
        else:
            assert ".lora_B." in name and t.shape[1] == LORA["r"]
    assert json.loads(adapter_metadata(adapter_of(out))[LORA_METADATA_KEY])["r"] == LORA["r"]


def test_adapters_by_reference_both_ways(model: Path, data: Path, tmp_path: Path) -> None:
    """The incoming adapter read from adapter_path; the result written to result_path when it
    is over inline_limit_bytes, kept inline when it is not."""
    first = tasks.train_round(train_task(model, data, local_steps=1))
    incoming = tmp_path / "global-v1.safetensors"
    incoming.write_bytes(adapter_of(first))
    by_ref = train_task(
        model,
        data,
        local_steps=1,
        adapter_path=str(incoming),
        result_path=str(tmp_path / "results" / "east.safetensors"),
        inline_limit_bytes=10,
    )
    out = TrainResult.from_wire(tasks.train_round(by_ref))
    assert out.adapter is None and out.adapter_path == by_ref["result_path"]
    assert out.adapter_nbytes == Path(out.adapter_path).stat().st_size and out.timings.store_s > 0
    inline = TrainResult.from_wire(tasks.train_round({**by_ref, "inline_limit_bytes": 10**9}))
    assert inline.adapter == adapter_of(
        tasks.train_round(train_task(model, data, local_steps=1, adapter=adapter_of(first)))
    )
    with pytest.raises(UserError, match="adapter_path"):
        tasks.train_round({**by_ref, "adapter": adapter_of(first)})


def test_bfloat16_adapter_travels_in_bfloat16(model: Path, data: Path) -> None:
    out = tasks.train_round(train_task(model, data, adapter_dtype="bfloat16", local_steps=1))
    assert {t.dtype for t in adapter_from_bytes(adapter_of(out)).values()} == {torch.bfloat16}


def test_bfloat16_base_trains_a_float32_adapter(model: Path, data: Path) -> None:
    out = tasks.train_round(train_task(model, data, dtype="bfloat16", local_steps=2))
    assert math.isfinite(out["train_loss"])
    state = adapter_from_bytes(adapter_of(out))
    assert {t.dtype for t in state.values()} == {torch.float32}
    res = tasks.evaluate(
        eval_task(
            model,
            data,
            adapter=adapter_of(out),
            dtype="bfloat16",
            max_samples=8,
            generate_samples=2,
        )
    )
    assert math.isfinite(res["val_loss"])


def test_cache_hit_gives_the_same_adapter_as_a_cold_cache(model: Path, data: Path) -> None:
    task = train_task(model, data, seed=7, round=2)
    model_cache.clear()
    cold = tasks.train_round(task)
    # Leave different state behind: another round, another adapter config, then the same task.
    tasks.train_round(train_task(model, data, seed=3, lora={**LORA, "r": 2}))
    warm = tasks.train_round(task)
    assert cold["cache_hit"] is False and warm["cache_hit"] is True
    assert adapter_of(warm) == adapter_of(cold)
    assert warm["train_loss"] == cold["train_loss"]
    # ... and continuing from a global adapter is just as reproducible.
    follow = train_task(model, data, seed=7, round=3, adapter=adapter_of(cold))
    again = tasks.train_round(follow)
    model_cache.clear()
    assert adapter_of(tasks.train_round(follow)) == adapter_of(again)


def test_loss_falls_on_a_fixed_batch(model: Path, data: Path) -> None:
    # 8 samples, batch 8: every step sees the same batch.
    fixed = {"max_samples": 8}
    out = tasks.train_round(train_task(model, data, local_steps=10, batch_size=8, lr=1e-2, **fixed))
    before = tasks.evaluate(eval_task(model, data, generate_samples=0, **fixed))
    after = tasks.evaluate(
        eval_task(model, data, adapter=adapter_of(out), generate_samples=0, **fixed)
    )
    assert before["val_loss"] == pytest.approx(out["first_loss"], rel=1e-4)
    assert after["val_loss"] < 0.8 * before["val_loss"]


def test_global_adapter_is_loaded_before_training(model: Path, data: Path) -> None:
    first = tasks.train_round(train_task(model, data, local_steps=6, lr=2e-2))
    second = tasks.train_round(
        train_task(model, data, local_steps=1, round=1, adapter=adapter_of(first))
    )
    fresh = tasks.train_round(train_task(model, data, local_steps=1, round=1))
    assert second["first_loss"] < fresh["first_loss"]


def test_server_rebuilds_the_fresh_adapter_from_shapes(model: Path, data: Path) -> None:
    from crossfl.client.adapter_io import fresh_adapter_from_shapes
    from crossfl.client.train import fresh_adapter_state

    out = tasks.train_round(train_task(model, data, local_steps=1))
    shapes = {k: tuple(t.shape) for k, t in adapter_from_bytes(adapter_of(out)).items()}
    entry, _ = model_cache.get_model(str(model), "float32", torch.device("cpu"))
    on_site = fresh_adapter_state(entry.wrapped(LoraSpec.model_validate(LORA)), seed=1)
    rebuilt = fresh_adapter_from_shapes(shapes, seed=1)
    assert rebuilt.keys() == on_site.keys()
    assert all(torch.equal(rebuilt[k], on_site[k]) for k in rebuilt)
    assert not torch.equal(
        rebuilt[next(k for k in rebuilt if ".lora_A." in k)],
        fresh_adapter_from_shapes(shapes, seed=2)[next(k for k in rebuilt if ".lora_A." in k)],
    )
    # B = 0: the fresh adapter leaves the base model's outputs unchanged.
    fresh = tasks.evaluate(
        eval_task(
            model,
            data,
            adapter=adapter_to_bytes(rebuilt),
            lora=LORA,
            max_samples=8,
            generate_samples=0,
        )
    )
    base = tasks.evaluate(eval_task(model, data, max_samples=8, generate_samples=0))
    assert fresh["val_loss"] == pytest.approx(base["val_loss"], abs=1e-6)


def test_batches_are_seeded_and_cover_the_data() -> None:
    a = batch_indices(10, 4, 5, torch.Generator().manual_seed(1))
    b = batch_indices(10, 4, 5, torch.Generator().manual_seed(1))
    assert a == b and all(len(x) == 4 for x in a)
    assert set(sum(a[:2], [])) | set(a[2][:2]) == set(range(10))  # first epoch: a permutation


def test_labels_cover_only_the_answer(model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    ex = encode_example(
        tok, "What is <SMILES> CCO </SMILES> ?", "<MOLFORMULA> C2H6O </MOLFORMULA>", 64
    )
    answer = tok.decode(list(ex.ids[ex.prompt_len :]), skip_special_tokens=True)
    assert answer == "<MOLFORMULA> C2H6O </MOLFORMULA>"
    assert ex.ids[0] == tok.bos_token_id and ex.ids[-1] == tok.eos_token_id
    short = encode_example(tok, "long prompt " * 40, "<NUMBER> 3 </NUMBER>", 24)
    assert len(short.ids) == 24 and short.ids[0] == tok.bos_token_id
    assert (
        tok.decode(list(short.ids[short.prompt_len :]), skip_special_tokens=True)
        == "<NUMBER> 3 </NUMBER>"
    )


# ------------------------------------------------------------------ evaluate


def test_evaluate_reports_loss_and_exact_match(model: Path, data: Path) -> None:
    out = tasks.train_round(train_task(model, data))
    res = tasks.evaluate(eval_task(model, data, adapter=adapter_of(out), max_samples=20))
    assert math.isfinite(res["val_loss"]) and res["num_samples"] == 20
    assert "name_conversion-s2f" in res["exact_match"]
    assert set(res["exact_match"]) == {"name_conversion-s2f", "property_prediction-carbons"}
    assert all(0.0 <= v <= 1.0 for v in res["exact_match"].values())
    assert res["generated"] == 6
    base = tasks.evaluate(eval_task(model, data, max_samples=20, generate_samples=0))
    assert math.isfinite(base["val_loss"]) and base["exact_match"] == {}
    # the answers' value tokens, per task: counted whatever was generated
    assert set(base["answer_tokens"]) == set(res["answer_tokens"]) == set(res["exact_match"])
    for right, total in [*base["answer_tokens"].values(), *res["answer_tokens"].values()]:
        assert 0 <= right <= total and total > 0


def test_answer_tokens_are_the_value_inside_the_tags(model: Path) -> None:
    """What the answer-token figure counts: the tokens of the formula or number, not the tags
    around it, at their places in the encoded example."""
    from transformers import AutoTokenizer

    from crossfl.client.evaluate import value_positions
    from crossfl.data.smolinstruct import Record

    tok = AutoTokenizer.from_pretrained(model)
    for row in chem_records("validation")[:6]:
        record = Record.model_validate(row)
        example = encode_example(tok, record.input, record.output, 64)
        positions = value_positions(tok, record, example)
        assert positions and all(p >= example.prompt_len for p in positions)
        text = tok.decode([example.ids[p] for p in positions])
        assert text.strip() == record.raw_output, (text, record.raw_output)
    cut = encode_example(tok, record.input, record.output, 8)  # answer cut short: count less
    assert len(value_positions(tok, record, cut)) <= len(positions)


def test_evaluate_needs_the_lora_config_for_a_bare_adapter(model: Path, data: Path) -> None:
    out = tasks.train_round(train_task(model, data, local_steps=1))
    bare = adapter_to_bytes(adapter_from_bytes(adapter_of(out)), "float32")  # no metadata
    with pytest.raises(UserError, match="lora"):
        tasks.evaluate(eval_task(model, data, adapter=bare))
    res = tasks.evaluate(
        eval_task(model, data, adapter=bare, lora=LORA, max_samples=8, generate_samples=0)
    )
    assert math.isfinite(res["val_loss"])


def test_answer_extraction_and_generation_sample() -> None:
    assert answer_of("<MOLFORMULA> C2H6O </MOLFORMULA> trailing") == "C2H6O"
    assert answer_of(" <NUMBER> 3.5") == "3.5"
    assert answer_of("no tag") == "no tag"

    class R:
        def __init__(self, task: str) -> None:
            self.task = task

    rows = [R("b")] * 5 + [R("name_conversion-s2f")] * 5 + [R("a")]
    picked = [r.task for r in pick_for_generation(rows, 5)]
    assert picked == ["name_conversion-s2f", "a", "b", "name_conversion-s2f", "b"]


# ------------------------------------------------------------------ errors


def test_missing_paths_name_the_path_and_the_fix(model: Path, data: Path, tmp_path: Path) -> None:
    gone = tmp_path / "no-model"
    with pytest.raises(UserError) as err:
        tasks.train_round(train_task(gone, data))
    assert str(gone) in str(err.value) and "make model" in str(err.value)
    with pytest.raises(UserError) as err:
        tasks.train_round(train_task(model, tmp_path / "none.jsonl"))
    assert "none.jsonl" in str(err.value) and "make data" in str(err.value)
    with pytest.raises(UserError, match="make data"):
        tasks.evaluate(eval_task(model, tmp_path / "none.jsonl"))


@pytest.mark.parametrize(
    "change, field",
    [
        ({"local_steps": 0}, "local_steps"),
        (
            {"data_path": "runs/r/data/east.jsonl"},
            "data_path",
        ),  # relative: a worker would look elsewhere
        ({"result_path": "results/east.safetensors"}, "result_path"),
        ({"dtype": "float8"}, "dtype"),
        ({"adapter": "not bytes"}, "adapter"),
        ({"lora": {**LORA, "r": 0}}, "lora.r"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_task_fields_are_user_errors(
    model: Path, data: Path, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(UserError, match=f"TrainTask.{field}"):
        tasks.train_round(train_task(model, data, **change))


def test_bad_lora_targets_and_mismatched_adapter(model: Path, data: Path) -> None:
    with pytest.raises(UserError, match="target_modules"):
        tasks.train_round(train_task(model, data, lora={**LORA, "target_modules": ["nope"]}))
    small = tasks.train_round(train_task(model, data, local_steps=1, lora={**LORA, "r": 2}))
    with pytest.raises(UserError, match="shape"):
        tasks.train_round(train_task(model, data, adapter=adapter_of(small)))
    with pytest.raises(UserError, match="missing"):
        tasks.train_round(train_task(model, data, adapter=adapter_to_bytes({"x": torch.zeros(1)})))


# ------------------------------------------------------------------ shipping


def test_task_functions_travel_by_reference() -> None:
    for fn in (tasks.train_round, tasks.evaluate, tasks.describe):
        assert pickle.loads(pickle.dumps(fn)) is fn
        assert fn.__module__ == "crossfl.client.tasks"


@pytest.mark.slow
def test_client_imports_no_server_side_code() -> None:
    code = (
        "import sys, crossfl.client.tasks, crossfl.client.model_cache, crossfl.client.train;"
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['crossfl','server'], ['crossfl','deploy'], ['crossfl','render'], "
        "['crossfl','sites'])];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
