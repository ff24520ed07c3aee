"""crossfl.server.screening: updates screened for layout, NaN and distance; weights and
answer tokens bounded by what the server knows; the base layout from the model's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossfl.client.adapter_io import adapter_to_bytes, fresh_adapter_from_shapes
from crossfl.client.contract import EvalResult, LoraSpec
from crossfl.errors import UserError
from crossfl.server.flat import FlatSpec
from crossfl.server.screening import (
    DistanceScreen,
    SampleBounds,
    adapter_size_bound,
    base_layout,
    distance,
    finite_problem,
    layout_problem,
    norm,
)


def test_updates_are_screened_for_layout_nan_and_distance() -> None:
    state = {"l.lora_A.weight": torch.zeros(2, 3), "l.lora_B.weight": torch.zeros(3, 2)}
    spec = FlatSpec.from_state(state)
    assert layout_problem(spec, state) is None
    assert "wrong shape" in (
        layout_problem(spec, {**state, "l.lora_A.weight": torch.zeros(4, 3)}) or ""
    )
    assert "missing" in (layout_problem(spec, {"l.lora_A.weight": torch.zeros(2, 3)}) or "")
    assert finite_problem(torch.tensor([0.0, float("nan"), float("inf")])).startswith(
        "non-finite: 2 of 3"
    )
    screen = DistanceScreen(factor=5, min_count=3)
    assert screen.outliers({"a": 1.0, "b": 100.0}) == {}  # too few to judge
    far = screen.outliers({"a": 1.0, "b": 1.2, "c": 0.9, "d": 50.0})
    assert list(far) == ["d"] and "5 x median" in far["d"]
    for d in (1.0, 1.1, 0.9):
        screen.accepted(d)
    assert list(screen.outliers({"e": 30.0})) == ["e"]  # async: judged against recent history


def test_one_update_is_screened_against_the_global_and_so_is_a_new_global() -> None:
    state = {"l.lora_A.weight": torch.ones(2, 3), "l.lora_B.weight": torch.zeros(3, 2)}
    spec = FlatSpec.from_state(state)
    assert "wrong dtype" in (
        layout_problem(spec, {**state, "l.lora_A.weight": torch.ones(2, 3).bfloat16()}) or ""
    )
    screen = DistanceScreen(factor=None, relative=10.0)
    g = spec.flatten(state)  # norm sqrt(6)
    assert screen.too_far(distance(g + 1.0, g), norm(g)) is None
    far = screen.too_far(distance(g * 100, g), norm(g))
    assert far is not None and "10 x its norm" in far
    assert "non-finite" in (screen.global_problem(g * float("inf"), g) or "")
    assert "last good global" in (screen.global_problem(g * 1e3, g) or "")
    assert screen.global_problem(g * 2, g) is None
    assert DistanceScreen(relative=None).global_problem(g * 1e3, g) is None


def test_a_sites_weight_is_bounded_by_what_the_server_knows() -> None:
    bounds = SampleBounds({"a": 100, "b": 5, "far": 0})  # far: a facility's own data, unknown
    assert bounds.counted("a", 80) == 80 and bounds.counted("b", 10**9) == 5
    assert bounds.counted("far", 10**9) == 100  # the largest known size
    assert bounds.counts == {"a": 100, "b": 5, "far": 100}
    unknown = SampleBounds({"x": 0, "y": 0})  # nothing known: equal weights
    assert unknown.counted("x", 10**9) == unknown.counted("y", 3) == 1
    assert unknown.counted("x", 0) == 0


def test_an_evaluations_answer_tokens_are_bounded() -> None:
    """What a site reports per task (tokens right, all tokens) is bounded like every other
    field of its result: counts, right within all, at most 1024 tasks."""
    good = {
        "val_loss": 1.0,
        "num_samples": 4,
        "timings": {"load_s": 0.0, "loss_s": 0.0, "generate_s": 0.0},
    }
    ok = EvalResult.from_wire({**good, "answer_tokens": {"t": [3, 5]}})
    assert ok.answer_tokens == {"t": (3, 5)}
    assert EvalResult.from_wire(ok.to_wire()) == ok  # JSON on the wire: a list, read back
    for bad in (
        {"t": [6, 5]},
        {"t": [-1, 5]},
        {"t": [1, 2, 3]},
        {"t": [0, 1 << 60]},
        {f"t{i}": [0, 1] for i in range(1025)},
        {"x" * 300: [0, 1]},
    ):
        with pytest.raises(UserError, match="answer_tokens"):
            EvalResult.from_wire({**good, "answer_tokens": bad})


def test_the_base_layout_comes_from_the_models_config(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    ).save_pretrained(tmp_path)  # a config.json, no weights
    lora = LoraSpec(r=2, alpha=4, target_modules=("q_proj",))
    spec = base_layout(str(tmp_path), lora, "bfloat16")
    assert spec.shapes[:2] == (torch.Size([2, 16]), torch.Size([16, 2]))
    assert spec.keys == tuple(
        f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{m}.weight"
        for i in range(2)
        for m in "AB"
    )
    assert set(spec.dtypes) == {torch.bfloat16}
    fresh = fresh_adapter_from_shapes(dict(zip(spec.keys, spec.shapes, strict=True)), 0)
    data = adapter_to_bytes(fresh, "bfloat16", metadata={"crossfl.lora": "x" * 300})
    assert len(data) <= adapter_size_bound(spec) < 2 * len(data) + 128 * 1024
