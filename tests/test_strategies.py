"""Strategies on small hand-checkable cases, state round trips, configure, kwargs errors."""

from __future__ import annotations

import math

import pytest
import torch

from crossfl.errors import UserError
from crossfl.server.strategies import ClientPlan, Update, get_strategy, known_names


def upd(
    site: str,
    values: list[float],
    n: int = 1,
    base: int = 0,
    steps: int = 10,
    train: float | None = None,
    wait: float | None = None,
) -> Update:
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


# ---------------------------------------------------------------- server optimizers


def test_fedavgm_accumulates_velocity() -> None:
    s = get_strategy("fedavgm", momentum=0.5)
    g = torch.zeros(1)
    g = s.aggregate(g, [upd("a", [2.0])], 0)  # delta 2, v 2 -> 2
    assert torch.equal(g, torch.tensor([2.0]))
    g = s.aggregate(g, [upd("a", [3.0])], 1)  # delta 1, v = 0.5*2 + 1 = 2 -> 4
    assert torch.equal(g, torch.tensor([4.0]))


def test_fedavgm_server_lr_scales_the_velocity_step() -> None:
    """APPFL's FedAvgM has no server learning rate (ours: 1 by default)."""
    half = get_strategy("fedavgm", momentum=0.5, server_lr=0.5)
    g = half.aggregate(torch.zeros(1), [upd("a", [2.0])], 0)  # v = 2, step 0.5 * 2
    assert torch.equal(g, torch.tensor([1.0]))
    g = half.aggregate(g, [upd("a", [3.0])], 1)  # delta 2, v = 0.5 * 2 + 2 = 3 -> 1 + 1.5
    assert torch.equal(g, torch.tensor([2.5]))


def test_fedadam_first_step_by_hand() -> None:
    s = get_strategy("fedadam", server_lr=0.1, beta1=0.5, beta2=0.75, tau=0.5)
    out = s.aggregate(torch.zeros(1), [upd("a", [2.0])], 0)
    m = 0.5 * 2.0  # (1 - b1) delta
    v = 0.75 * 0.25 + 0.25 * 4.0  # b2 tau^2 + (1 - b2) delta^2
    assert out.item() == pytest.approx(0.1 * m / (v**0.5 + 0.5))


def test_fedyogi_second_moment_by_hand() -> None:
    s = get_strategy("fedyogi", server_lr=0.1, beta1=0.5, beta2=0.75, tau=0.5)
    out = s.aggregate(torch.zeros(1), [upd("a", [2.0])], 0)
    v = 0.25 - 0.25 * 4.0 * -1.0  # v - (1-b2) d^2 sign(v - d^2), v - d^2 < 0
    assert out.item() == pytest.approx(0.1 * 1.0 / (v**0.5 + 0.5))


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fedavgm", {"momentum": 0.9}),
        ("fedadam", {"server_lr": 0.1}),
        ("fedyogi", {"server_lr": 0.1}),
    ],
)
def test_server_optimizer_state_round_trip(name: str, kwargs: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    a = get_strategy(name, **kwargs)
    g = torch.randn(16, generator=gen)
    for v in range(2):
        g = a.aggregate(
            g,
            [
                upd("x", torch.randn(16, generator=gen).tolist(), n=3, base=v),
                upd("y", torch.randn(16, generator=gen).tolist(), n=1, base=v),
            ],
            v,
        )
    b = get_strategy(name, **kwargs)
    b.load_state_dict(a.state_dict())
    nxt = [upd("x", torch.randn(16, generator=gen).tolist())]
    torch.testing.assert_close(a.aggregate(g, nxt, 2), b.aggregate(g, nxt, 2))
    fresh = get_strategy(name, **kwargs)
    assert not torch.allclose(fresh.aggregate(g, nxt, 2), a.aggregate(g, nxt, 3))
    with pytest.raises(ValueError, match="unknown state"):
        b.load_state_dict({"bogus": torch.zeros(1)})


# ---------------------------------------------------------------- staleness


@pytest.mark.parametrize(
    ("kwargs", "u", "expected"),
    [
        ({"staleness_fn": "constant"}, 7, 1.0),
        ({"staleness_fn": "polynomial", "a": 0.5}, 3, 0.5),  # (3+1)^-0.5
        ({"staleness_fn": "hinge", "a": 2.0, "b": 2}, 2, 1.0),
        ({"staleness_fn": "hinge", "a": 2.0, "b": 2}, 4, 0.2),  # 1 / (2*2 + 1)
        ({"staleness_fn": "harmonic", "a": 0.5}, 2, 0.5),
        ({"staleness_fn": "exponential", "a": 0.5}, 2, 0.36787944117144233),
    ],
)
def test_staleness_functions(kwargs: dict, u: int, expected: float) -> None:
    s = get_strategy("fedasync", alpha=1.0, **kwargs)
    g = s.aggregate(torch.zeros(1), [upd("a", [1.0], base=0)], u)  # u versions behind
    assert g.item() == pytest.approx(expected, rel=1e-6)


def test_unknown_staleness_fn_is_named() -> None:
    with pytest.raises(UserError, match=r"strategy\.kwargs\.staleness_fn"):
        get_strategy("fedasync", staleness_fn="linear")


# ---------------------------------------------------------------- FedAsync / FedBuff


def test_fedasync_mixes_with_alpha_and_weights() -> None:
    s = get_strategy("fedasync", alpha=0.5)
    s.register_sites({"a": 1, "b": 3})
    # equal weights: 1 / num_sites, as APPFL's 1 / num_clients
    assert torch.equal(
        s.aggregate(torch.tensor([0.0]), [upd("a", [4.0])], 0), torch.tensor([1.0])
    )  # 0.5 * 1/2 of the way to 4
    w = get_strategy("fedasync", alpha=1.0, weighting="num_samples")
    w.register_sites({"a": 1, "b": 3})
    out = w.aggregate(torch.tensor([0.0]), [upd("a", [4.0], n=1)], 0)  # a's share is 1/4
    assert torch.equal(out, torch.tensor([1.0]))  # from the first update on
    out = w.aggregate(torch.tensor([0.0]), [upd("b", [4.0], n=3)], 1)  # 3/4 of the way
    assert torch.equal(out, torch.tensor([3.0]))
    with pytest.raises(ValueError, match="one update"):
        s.aggregate(torch.zeros(1), [upd("a", [1.0]), upd("b", [1.0])], 0)


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_fedasync_alpha_is_a_mixing_weight(alpha: float) -> None:
    with pytest.raises(UserError, match=r"strategy\.kwargs\.alpha"):
        get_strategy("fedasync", alpha=alpha)


def test_async_weights_fall_back_to_the_sites_seen_before_registration() -> None:
    w = get_strategy("fedasync", alpha=1.0, weighting="num_samples")
    w.aggregate(torch.tensor([0.0]), [upd("a", [1.0], n=1)], 0)  # a alone: weight 1
    out = w.aggregate(torch.tensor([0.0]), [upd("b", [4.0], n=3)], 1)  # 3 of 4 samples seen
    assert torch.equal(out, torch.tensor([3.0]))
    e = get_strategy("fedasync", alpha=1.0)
    e.aggregate(torch.tensor([0.0]), [upd("a", [1.0])], 0)
    out = e.aggregate(torch.tensor([0.0]), [upd("b", [4.0])], 1)  # two sites seen: 1/2
    assert torch.equal(out, torch.tensor([2.0]))


def test_registered_counts_weigh_over_the_reported_ones() -> None:
    w = get_strategy("fedasync", alpha=1.0, weighting="num_samples")
    w.register_sites({"a": 1, "b": 1})
    out = w.aggregate(torch.tensor([0.0]), [upd("a", [4.0], n=100)], 0)
    assert torch.equal(out, torch.tensor([2.0]))  # 1 of 2 registered samples
    zero = get_strategy("fedasync", alpha=1.0, weighting="num_samples")
    zero.register_sites({"a": 0, "b": 0, "c": 0, "d": 0})  # the site list alone
    out = zero.aggregate(torch.tensor([0.0]), [upd("a", [4.0], n=5)], 0)
    assert torch.equal(out, torch.tensor([1.0]))  # equal weights: 1/4


@pytest.mark.parametrize("counts", [{}, {"a": 3, "b": -1}])
def test_register_sites_rejects_bad_counts(counts: dict) -> None:
    with pytest.raises(ValueError, match="register_sites|negative"):
        get_strategy("fedbuff").register_sites(counts)


def test_register_sites_is_a_no_op_for_sync_strategies() -> None:
    s = get_strategy("fedavg")
    s.register_sites({"a": 1, "b": 3})
    assert s.state_dict() == {}
    out = s.aggregate(torch.zeros(1), [upd("a", [2.0], n=1), upd("b", [6.0], n=1)], 0)
    assert torch.equal(out, torch.tensor([4.0]))  # the round's reported counts


def test_fedbuff_buffers_k_then_applies_the_sum() -> None:
    s = get_strategy("fedbuff", K=2, alpha=1.0)
    s.register_sites({"a": 1, "b": 1})
    g = torch.tensor([1.0])
    assert s.aggregate(g, [upd("a", [3.0])], 0) is None
    out = s.aggregate(g, [upd("b", [5.0])], 0)  # 1 + 1.0 * (2/2 + 4/2)
    assert torch.equal(out, torch.tensor([4.0]))
    assert s.aggregate(out, [upd("a", [4.0], base=1)], 1) is None  # buffer restarted


def test_fedbuff_state_round_trip_keeps_the_buffer() -> None:
    a = get_strategy("fedbuff", K=3, weighting="num_samples")
    a.register_sites({"a": 2, "b": 6, "c": 2, "d": 10})
    g = torch.tensor([1.0, 2.0])
    a.aggregate(g, [upd("a", [3.0, 3.0], n=2)], 0)
    a.aggregate(g, [upd("b", [0.0, 1.0], n=6)], 0)
    b = get_strategy("fedbuff", K=3, weighting="num_samples")
    b.load_state_dict(a.state_dict())
    assert b.state_dict()["sites"]["registered"] == {"a": 2, "b": 6, "c": 2, "d": 10}
    last = [upd("c", [5.0, 5.0], n=2)]
    out_a, out_b = a.aggregate(g, last, 0), b.aggregate(g, last, 0)
    assert out_a is not None and out_b is not None
    torch.testing.assert_close(out_a, out_b)
    unregistered = get_strategy("fedbuff", K=1, weighting="num_samples")
    assert not torch.allclose(unregistered.aggregate(g, last, 0), out_a)


def test_fedbuff_bad_k() -> None:
    with pytest.raises(UserError, match=r"strategy\.kwargs\.K"):
        get_strategy("fedbuff", K=0)


# ---------------------------------------------------------------- FedCompass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def compass(sites: tuple[str, ...] = ("a", "b"), **kwargs: object):  # type: ignore[no-untyped-def]
    s = get_strategy(
        "fedcompass", min_local_steps=5, max_local_steps=50, speed_momentum=1.0, **kwargs
    )
    s.register_sites({site: 1 for site in sites})
    clock = Clock()
    s.clock = clock  # type: ignore[attr-defined]
    s.reset_clock()  # type: ignore[attr-defined]
    return s, clock


def test_fedcompass_sizes_steps_to_measured_speed() -> None:
    s, clock = compass(("fast", "slow"), alpha=0.5)
    plan = ClientPlan(local_steps=10, lr=1e-3)
    assert s.configure("fast", 0, plan) == ClientPlan(50, 1e-3)  # unknown speed: max steps
    assert s.configure("slow", 0, plan) == ClientPlan(50, 1e-3)
    g = torch.zeros(1)
    clock.t = 50.0  # fast: 1 s/step, first arrival is mixed in alone
    g = s.aggregate(g, [upd("fast", [4.0], steps=50, train=50.0)], 0)
    assert torch.equal(g, torch.tensor([1.0]))  # alpha / num_sites = 0.25
    fast_plan = s.configure("fast", 1, plan)  # first group: max steps, arrives at t=100
    assert fast_plan.local_steps == 50
    # slow: 1.2 s/step from dispatch to arrival (its 10 s of training alone do not count);
    # joins fast's group (40 s left -> 33 steps)
    clock.t = 60.0
    s.aggregate(g, [upd("slow", [0.0], steps=50, train=10.0)], 1)
    slow_plan = s.configure("slow", 2, plan)
    assert slow_plan.local_steps == 33
    assert 5 <= slow_plan.local_steps < fast_plan.local_steps <= 50


def two_site_group(s, clock):  # type: ignore[no-untyped-def]
    """a (1 s/step) and b (1.1 s/step) measured, then both put in one arrival group."""
    plan = ClientPlan(local_steps=10, lr=1e-3)
    for site in ("a", "b"):
        s.configure(site, 0, plan)
    g = torch.zeros(1)
    clock.t = 50.0
    g = s.aggregate(g, [upd("a", [4.0], steps=50, train=50.0)], 0)
    assert s.configure("a", 1, plan).local_steps == 50  # group 0: a, expected t=100
    clock.t = 55.0
    g = s.aggregate(g, [upd("b", [4.0], steps=50, train=55.0)], 1)
    assert s.configure("b", 2, plan).local_steps == 40  # joins it: floor(45 / 1.1)
    return g


def test_fedcompass_group_waits_for_all_members() -> None:
    s, clock = compass(alpha=0.5)
    g = two_site_group(s, clock)
    clock.t = 100.0
    assert s.aggregate(g, [upd("a", [2.0], base=1, steps=50)], 2) is None  # waits for b
    clock.t = 101.0
    out = s.aggregate(g, [upd("b", [6.0], base=2, steps=40)], 2)
    assert out is not None  # both mixed at once; a is one version stale (s = 1 here)
    torch.testing.assert_close(out, 0.5 * g + 0.25 * 2.0 + 0.25 * 6.0)


def test_fedcompass_late_member_waits_for_the_next_group() -> None:
    s, clock = compass(alpha=0.5)
    g = two_site_group(s, clock)
    clock.t = 100.0
    assert s.aggregate(g, [upd("a", [2.0], base=1, steps=50)], 2) is None
    clock.t = 200.0  # past group 0's window (50 + 1.5 * 50 = 125): a's group flushes alone
    out = s.aggregate(g, [upd("b", [6.0], base=2, steps=40)], 2)
    assert out is not None
    torch.testing.assert_close(out, 0.75 * g + 0.25 * 2.0)
    assert [u["site"] for u in s.state_dict()["buffered"]] == ["b"]  # in the general buffer
    assert s.groups == {}  # type: ignore[attr-defined]


def test_fedcompass_newer_update_replaces_the_sites_buffered_one() -> None:
    """a waits in group 0 for b, is sent its next task at once (the async driver keeps every
    site busy), and arrives again in its new group before b: its first update is dropped."""
    s, clock = compass(alpha=0.5)
    g = two_site_group(s, clock)
    plan = ClientPlan(local_steps=10, lr=1e-3)
    clock.t = 100.0
    assert s.aggregate(g, [upd("a", [2.0], base=1, steps=50)], 2) is None  # waits for b
    assert s.configure("a", 2, plan).local_steps == 50  # a new group, expected at t=150
    clock.t = 110.0
    out = s.aggregate(g, [upd("a", [4.0], base=2, steps=50)], 2)  # completes its group
    assert out is not None
    torch.testing.assert_close(out, 0.75 * g + 0.25 * 4.0)  # the newer update alone
    assert s.state_dict()["buffered"] == []  # a's first update is gone, not waiting for b
    clock.t = 120.0  # b, in group 0's window (to t=125), completes it alone
    out2 = s.aggregate(out, [upd("b", [6.0], base=2, steps=40)], 3)
    assert out2 is not None
    torch.testing.assert_close(out2, 0.75 * out + 0.25 * 6.0)


def late_b_then_group_of_a_and_b(s, clock, g):  # type: ignore[no-untyped-def]
    """b misses group 0 (its update waits in the general buffer); a and b then share group 1
    (expected at t=180, window to t=205), where a arrives in time and waits for b."""
    plan = ClientPlan(local_steps=10, lr=1e-3)
    clock.t = 100.0
    assert s.aggregate(g, [upd("a", [2.0], base=1, steps=50)], 2) is None
    clock.t = 130.0  # b after group 0's window (125): group 0 flushes with a alone
    out1 = s.aggregate(g, [upd("b", [6.0], base=2, steps=40)], 2)
    torch.testing.assert_close(out1, 0.75 * g + 0.25 * 2.0)
    assert s.configure("a", 3, plan).local_steps == 50  # group 1: a at 1 s/step, t=180
    assert s.configure("b", 3, plan).local_steps == 26  # b (1.875 s/step) joins it
    clock.t = 180.0
    assert s.aggregate(out1, [upd("a", [4.0], base=3, steps=50)], 3) is None
    return out1


def test_fedcompass_closed_group_takes_the_general_buffer_before_a_newer_update() -> None:
    """b arrives again after group 1's window closed, while its late update from group 0 is
    still in the general buffer: APPFL's timer aggregated group 1 at its deadline with that
    update; ours must too (before b's newer update supersedes it), not drop it first."""
    s, clock = compass(alpha=0.5)
    out1 = late_b_then_group_of_a_and_b(s, clock, two_site_group(s, clock))
    clock.t = 210.0
    out2 = s.aggregate(out1, [upd("b", [8.0], base=3, steps=26)], 3)
    torch.testing.assert_close(out2, 0.5 * out1 + 0.25 * 6.0 + 0.25 * 4.0)
    assert [u["site"] for u in s.state_dict()["buffered"]] == ["b"]  # the newer one waits


def test_fedcompass_aggregates_a_closed_window_on_its_timer() -> None:
    """APPFL's group timer: at the window's end the group aggregates with what arrived (and
    the general buffer), and its members are free again; no arrival is needed."""
    s, clock = compass(alpha=0.5)
    out1 = late_b_then_group_of_a_and_b(s, clock, two_site_group(s, clock))
    assert s.held_sites() == {"a"} and s.due_in() == pytest.approx(25.0)  # a waits for b
    clock.t = 205.5
    assert s.due_in() == 0.0
    out2 = s.flush_due(out1, 3)
    torch.testing.assert_close(out2, 0.5 * out1 + 0.25 * 6.0 + 0.25 * 4.0)
    assert s.held_sites() == set() and s.due_in() is None
    assert s.flush_due(out2, 4) is None  # nothing more owed


def test_fedcompass_state_round_trip_keeps_buffered_updates() -> None:
    s, clock = compass(alpha=0.5)
    g = two_site_group(s, clock)
    clock.t = 100.0
    assert s.aggregate(g, [upd("a", [2.0], base=1, steps=50)], 2) is None
    state = s.state_dict()
    assert set(state["speed"]) == {"a", "b"} and len(state["buffered"]) == 1
    r = get_strategy("fedcompass", alpha=0.5)
    r.load_state_dict(state)
    assert r.state_dict()["speed"] == state["speed"]
    assert r.state_dict()["sites"]["registered"] == {"a": 1, "b": 1}
    assert [u["site"] for u in r.state_dict()["buffered"]] == ["a"]


def test_fedcompass_bad_bounds() -> None:
    with pytest.raises(UserError, match="min_local_steps"):
        get_strategy("fedcompass", min_local_steps=10, max_local_steps=5)


# ---------------------------------------------------------------- FedQueue


def queue(**kwargs: object):  # type: ignore[no-untyped-def]
    return get_strategy(
        "fedqueue",
        t_sync=100.0,
        theta=10.0,
        q_init=0.0,
        beta_queue=1.0,
        alpha_compute=1.0,
        alpha_admission=0.2,
        warm_up_steps=2,
        **kwargs,
    )


def test_fedqueue_sizes_steps_from_queue_and_step_time() -> None:
    s = queue(max_local_steps=60)
    plan = ClientPlan(local_steps=5, lr=0.1)
    assert s.configure("fast", 0, plan) == ClientPlan(2, 0.1)  # warm-up before measuring
    g = torch.zeros(1)
    s.aggregate(
        g,
        [
            upd("fast", [1.0], steps=10, train=10.0, wait=10.0),
            upd("slow", [1.0], steps=10, train=40.0, wait=30.0),
        ],
        0,
    )
    fast, slow = s.configure("fast", 1, plan), s.configure("slow", 1, plan)
    assert fast.local_steps == 60  # floor((100 - 10 - 10) / 1) = 80, capped at 60
    assert slow.local_steps == 15  # floor((100 - 30 - 10) / 4)
    assert slow.lr == pytest.approx(0.1) and fast.lr == pytest.approx(0.1 * 15 / 60)
    assert s.round_timeout_s() == pytest.approx(115.0)


def test_fedqueue_late_update_merges_into_next_round() -> None:
    s = queue(staleness_fn="harmonic", beta=1.0)
    g = torch.zeros(1)
    # deadline = q_init + 0.2 * 100 = 20 s: b waited 25 s and is held back
    out = s.aggregate(g, [upd("a", [2.0], n=1, wait=5.0), upd("b", [8.0], n=1, wait=25.0)], 0)
    assert torch.equal(out, torch.tensor([2.0]))
    assert [u["site"] for u in s.state_dict()["late"]] == ["b"]
    # next round: b's update is one version stale, s = 1/2: (1*4 + 0.5*8) / 1.5
    out = s.aggregate(out, [upd("a", [4.0], n=1, base=1, wait=5.0)], 1)
    assert out.item() == pytest.approx((4.0 + 0.5 * 8.0) / 1.5)
    assert s.state_dict()["late"] == []


def test_fedqueue_exponential_staleness_by_hand() -> None:
    """APPFL 1.12's exponential FedQueue staleness raises TypeError, so no oracle: by hand."""
    s = queue(staleness_fn="exponential", beta=0.5)
    out = s.aggregate(
        torch.zeros(1),
        [upd("a", [2.0], n=1, base=3, wait=5.0), upd("b", [8.0], n=1, base=1, wait=5.0)],
        3,
    )
    p = math.exp(-0.5 * 2)  # b is two versions behind
    assert out.item() == pytest.approx((2.0 + p * 8.0) / (1.0 + p))


def test_fedqueue_uses_late_updates_when_nothing_was_admitted() -> None:
    s = queue()
    out = s.aggregate(
        torch.zeros(1), [upd("a", [2.0], n=1, wait=50.0), upd("b", [4.0], n=3, wait=60.0)], 0
    )
    assert torch.equal(out, torch.tensor([3.5]))


def test_fedqueue_state_round_trip() -> None:
    a = queue()
    g = torch.zeros(1)
    a.aggregate(g, [upd("a", [2.0], wait=5.0, train=3.0), upd("b", [8.0], wait=25.0)], 0)
    b = queue()
    b.load_state_dict(a.state_dict())
    nxt = [upd("a", [4.0], base=1, wait=5.0)]
    torch.testing.assert_close(a.aggregate(g, nxt, 1), b.aggregate(g, nxt, 1))
    assert a.configure("a", 2, ClientPlan(3, 0.1)) == b.configure("a", 2, ClientPlan(3, 0.1))


def test_fedqueue_bad_kwargs() -> None:
    with pytest.raises(UserError, match=r"strategy\.kwargs\.t_sync"):
        get_strategy("fedqueue", t_sync=-1)
    with pytest.raises(UserError, match=r"strategy\.kwargs\.staleness_fn"):
        get_strategy("fedqueue", staleness_fn="polynomial")


def test_is_async_by_name() -> None:
    from crossfl.server.strategies import is_async

    assert [n for n in ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedqueue") if is_async(n)] == []
    assert all(is_async(n) for n in ("fedasync", "fedbuff", "FedCompass"))
    with pytest.raises(UserError, match="unknown strategy"):
        is_async("fedprox")


@pytest.mark.parametrize(
    "name", ["fedavgm", "fedadam", "fedyogi", "fedasync", "fedbuff", "fedcompass", "fedqueue"]
)
def test_state_survives_a_weights_only_checkpoint(name: str) -> None:
    """Checkpoints are torch.save'd and loaded with weights_only=True: plain types only."""
    import io

    kwargs = {"K": 3} if name == "fedbuff" else {}
    s = get_strategy(name, **kwargs)
    s.register_sites({"a": 2, "b": 2, "c": 5})
    g = torch.zeros(3)
    for i, site in enumerate(["a", "b"]):
        s.configure(site, 0, ClientPlan(4, 0.1))
        s.aggregate(g, [upd(site, [1.0 + i, 2.0, 3.0], n=2, train=2.0, wait=50.0 * i)], 0)
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    restored = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    fresh = get_strategy(name, **kwargs)
    fresh.load_state_dict(restored)
    assert set(fresh.state_dict()) == set(s.state_dict())
    if name in ("fedasync", "fedbuff", "fedcompass"):  # what was registered comes back
        assert fresh.state_dict()["sites"]["registered"] == {"a": 2, "b": 2, "c": 5}
