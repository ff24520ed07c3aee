"""Strategies on small hand-checkable cases, state round trips, configure, kwargs errors."""

from __future__ import annotations

import pytest
import torch

from crossfl.errors import UserError
from crossfl.server.strategies import ClientPlan, Update, get_strategy, known_names


def upd(site: str, values: list[float], n: int = 1, base: int = 0, steps: int = 10,
        train: float | None = None, wait: float | None = None) -> Update:
    return Update(site, torch.tensor(values, dtype=torch.float32), n, base, steps, train, wait)


# ---------------------------------------------------------------- registry and kwargs


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UserError) as info:
        get_strategy("fedprox")
    text = str(info.value)
    assert "fedprox" in text and "strategy.name" in text
    for name in known_names():
        assert name in text


def test_names_are_case_insensitive() -> None:
    assert get_strategy("FedAvg").name == "fedavg"


def test_unknown_kwarg_is_named() -> None:
    with pytest.raises(UserError, match=r"strategy\.kwargs\.bogus.*known arguments: weighting"):
        get_strategy("fedavg", bogus=1)


def test_bad_kwarg_value_is_named() -> None:
    with pytest.raises(UserError, match=r"strategy\.kwargs\.weighting"):
        get_strategy("fedavg", weighting="by_vibes")


# ---------------------------------------------------------------- FedAvg


def test_fedavg_weights_by_num_samples() -> None:
    s = get_strategy("fedavg")
    out = s.aggregate(torch.zeros(2), [upd("a", [1, 2], n=1), upd("b", [5, 6], n=3)], 0)
    assert torch.equal(out, torch.tensor([4.0, 5.0]))  # (1*[1,2] + 3*[5,6]) / 4


def test_fedavg_equal_weighting_and_zero_samples() -> None:
    eq = get_strategy("fedavg", weighting="equal")
    out = eq.aggregate(torch.zeros(1), [upd("a", [1], n=1), upd("b", [5], n=99)], 0)
    assert torch.equal(out, torch.tensor([3.0]))
    zero = get_strategy("fedavg")
    out = zero.aggregate(torch.zeros(1), [upd("a", [2], n=0), upd("b", [4], n=0)], 0)
    assert torch.equal(out, torch.tensor([3.0]))


def test_fedavg_ignores_global_and_keeps_inputs() -> None:
    s = get_strategy("fedavg")
    a, b = upd("a", [1.0], n=1), upd("b", [3.0], n=1)
    out = s.aggregate(torch.tensor([100.0]), [a, b], 7)
    assert torch.equal(out, torch.tensor([2.0]))
    assert torch.equal(a.params, torch.tensor([1.0]))


def test_fedavg_rejects_mismatched_shapes() -> None:
    s = get_strategy("fedavg")
    with pytest.raises(ValueError, match="'b'"):
        s.aggregate(torch.zeros(2), [upd("a", [1, 2]), upd("b", [1, 2, 3])], 0)
    with pytest.raises(ValueError, match="at least one"):
        s.aggregate(torch.zeros(2), [], 0)


def test_default_configure_and_state() -> None:
    s = get_strategy("fedavg")
    plan = ClientPlan(local_steps=7, lr=1e-4)
    assert s.configure("a", 0, plan) == plan
    assert s.state_dict() == {}
    s.load_state_dict({})
    with pytest.raises(ValueError):
        s.load_state_dict({"m": 1})
