"""Flat buffers: layout, round trips, dtype handling, errors, fused weighted sums."""

from __future__ import annotations

import pytest
import torch

from crossfl.server import flat
from crossfl.server.flat import FlatSpec, flatten, unflatten, weighted_sum


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "layer.1.lora_B": torch.randn(8, 2, generator=g),
        "layer.0.lora_A": torch.randn(2, 8, generator=g),
        "bias": torch.randn(3, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(2.5),
    }


def test_spec_layout_is_sorted_with_offsets() -> None:
    spec = FlatSpec.from_state(_state())
    assert spec.keys == ("bias", "layer.0.lora_A", "layer.1.lora_B", "scalar")
    assert spec.offsets == (0, 3, 19, 35, 36)
    assert spec.numel == 36 and spec.nbytes == 144
    assert spec.dtypes[0] == torch.bfloat16 and spec.shapes[3] == torch.Size([])


def test_flatten_places_each_key_at_its_offset() -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    vec = flatten(state, spec)
    assert vec.dtype == torch.float32 and vec.shape == (36,)
    for key, start, stop in zip(spec.keys, spec.offsets, spec.offsets[1:], strict=False):
        assert torch.equal(vec[start:stop], state[key].float().reshape(-1)), key


def test_round_trip_keeps_shapes_and_dtypes() -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    back = unflatten(flatten(state, spec), spec)
    assert list(back) == list(spec.keys)
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape
        assert torch.equal(back[key], tensor), key


def test_float32_entries_are_views_unless_copy() -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    vec = flatten(state, spec)
    views = unflatten(vec, spec)
    copies = unflatten(vec, spec, copy=True)
    vec.add_(1.0)
    assert torch.equal(views["layer.0.lora_A"], state["layer.0.lora_A"] + 1.0)
    assert torch.equal(copies["layer.0.lora_A"], state["layer.0.lora_A"])


def test_flatten_without_mixed_cat_support_gives_same_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    fast = spec.flatten(state)
    monkeypatch.setattr(flat, "_CAT_CASTS", False)
    assert torch.equal(spec.flatten(state), fast)


def test_flatten_into_a_reused_buffer() -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    out = torch.full((spec.numel,), -1.0)
    assert flatten(state, spec, out=out) is out
    assert torch.equal(out, spec.flatten(state))
    with pytest.raises(ValueError, match="float32 of shape"):
        spec.flatten(state, out=torch.zeros(spec.numel + 1))
    with pytest.raises(ValueError, match="float32 of shape"):
        spec.flatten(state, out=torch.zeros(spec.numel, dtype=torch.float64))


def test_shape_mismatch_names_the_key() -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    state["layer.1.lora_B"] = torch.zeros(8, 3)
    with pytest.raises(ValueError, match=r"layer\.1\.lora_B.*\(8, 3\).*\(8, 2\)"):
        spec.flatten(state)


def test_missing_and_extra_keys_are_named() -> None:
    state = _state()
    spec = FlatSpec.from_state(state)
    missing = dict(state)
    del missing["bias"]
    with pytest.raises(ValueError, match="bias: key missing"):
        spec.flatten(missing)
    extra = dict(state, zzz=torch.zeros(1))
    del extra["scalar"]
    with pytest.raises(ValueError, match="scalar: key missing"):
        spec.flatten(extra)
    with pytest.raises(ValueError, match="zzz: key not in the flat layout"):
        spec.flatten(dict(state, zzz=torch.zeros(1)))


def test_unflatten_rejects_wrong_length() -> None:
    spec = FlatSpec.from_state(_state())
    with pytest.raises(ValueError, match=r"\(36,\)"):
        spec.unflatten(torch.zeros(35))
    with pytest.raises(ValueError):
        spec.unflatten(torch.zeros(6, 6))


def test_empty_state_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        FlatSpec.from_state({})


@pytest.mark.parametrize("n", [1, 5, 1000, (1 << 20) + 7])
def test_weighted_sum_matches_stacked_matvec(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    vecs = [torch.randn(n, generator=g) for _ in range(4)]
    weights = [0.1, 0.2, 0.3, 0.4]
    expected = torch.tensor(weights) @ torch.stack(vecs)
    got = weighted_sum(vecs, weights)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    out = torch.empty(n)
    assert weighted_sum(vecs, weights, out=out) is out


def test_weighted_sum_errors() -> None:
    with pytest.raises(ValueError, match="weights"):
        weighted_sum([torch.zeros(3)], [0.5, 0.5])
    with pytest.raises(ValueError, match=r"vector 1"):
        weighted_sum([torch.zeros(3), torch.zeros(4)], [0.5, 0.5])
