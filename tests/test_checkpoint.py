"""crossfl.server.checkpoint: a round trip keeps tensors, strategy state and RNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossfl.client.adapter_io import adapter_to_bytes
from crossfl.errors import UserError
from crossfl.server import checkpoint as ckpt
from crossfl.server.flat import FlatSpec
from crossfl.server.strategies import get_strategy
from crossfl.server.strategies.base import Update


def test_checkpoint_round_trip_keeps_tensors_strategy_and_rng(tmp_path: Path) -> None:
    state = {"l.lora_A.weight": torch.randn(2, 3), "l.lora_B.weight": torch.randn(3, 2)}
    spec = FlatSpec.from_state(state)
    flat = spec.flatten(state)
    buff = get_strategy("fedbuff", K=3)
    buff.aggregate(flat, [Update("a", flat + 1, 5, 0, 2)], 0)  # buffered: state worth keeping
    torch.manual_seed(3)
    c = ckpt.Checkpoint(
        round=4,
        version=3,
        updates=9,
        elapsed_s=12.5,
        metrics_bytes=1234,
        strategy_name="fedbuff",
        strategy_state=buff.state_dict(),
        global_flat=flat,
        spec=spec,
        parking={"failures": {"a": 1}, "parked_until": {}},
        screen_history=[0.5],
        rng=ckpt.rng_state(),
    )
    expected_draw = torch.rand(3)
    ckpt.save(tmp_path, c, adapter_to_bytes(state))
    back = ckpt.load(tmp_path)
    assert back is not None and (back.round, back.version, back.updates, back.metrics_bytes) == (
        4,
        3,
        9,
        1234,
    )
    assert torch.equal(back.global_flat, flat) and back.spec == spec
    again = get_strategy("fedbuff", K=3)
    again.load_state_dict(back.strategy_state)
    assert again.count == 1 and torch.equal(again.buffer, buff.buffer)
    ckpt.restore_rng(back.rng)
    assert torch.equal(torch.rand(3), expected_draw)
    assert not ckpt.is_finished(tmp_path)
    assert ckpt.load(tmp_path / "none") is None
    (tmp_path / "round-00004" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        ckpt.load(tmp_path)
