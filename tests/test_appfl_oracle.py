"""Our flat-buffer strategies against APPFL 1.12's aggregators and schedulers, to 1e-5.

APPFL runs on its own dict-of-tensors state, driven the way its server drives it (clients
download with ``get_parameters(client_id=...)``, sample sizes set with
``set_client_sample_size``); our strategies run on flat buffers with versions. After every
aggregation both global models must agree.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import random
from typing import Any

import pytest
import torch

aggregators = pytest.importorskip(
    "appfl.algorithm.aggregator",
    reason="APPFL 1.12 is not importable: pip install --no-deps -r requirements/appfl.txt",
)
schedulers = pytest.importorskip("appfl.algorithm.scheduler", reason="APPFL schedulers missing")
from omegaconf import DictConfig  # noqa: E402  (installed with APPFL)

from crossfl.server.flat import FlatSpec  # noqa: E402
from crossfl.server.strategies import ClientPlan, Update, get_strategy  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
SITES = ["alcf", "olcf", "nersc", "tacc"]
SHAPES = {  # a tiny LoRA adapter: 2 layers x q,v x (A, B), r=4, hidden 24
    f"model.layers.{i}.self_attn.{p}_proj.lora_{ab}.weight": (4, 24) if ab == "A" else (24, 4)
    for i in range(2)
    for p in ("q", "v")
    for ab in ("A", "B")
}


def adapter(gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: torch.randn(*s, generator=gen) * scale for k, s in SHAPES.items()}


SPEC = FlatSpec.from_state(adapter(torch.Generator().manual_seed(0)))


def local_model(gen: torch.Generator, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A client's trained adapter: its starting global model plus a random step."""
    noise = adapter(gen, scale=0.1)
    return {k: base[k] + noise[k] for k in base}


def assert_same(ours: torch.Tensor, theirs: dict[str, torch.Tensor]) -> None:
    torch.testing.assert_close(ours, SPEC.flatten({k: v.float() for k, v in theirs.items()}), **TOL)


def appfl(cls_name: str, **configs: Any) -> Any:
    """An APPFL aggregator. ``optimize_memory`` (APPFL's default True) only adds a gc.collect()
    per call around the same arithmetic; it is off unless a test asks, to keep the suite fast."""
    configs.setdefault("optimize_memory", False)
    return getattr(aggregators, cls_name)(aggregator_configs=DictConfig(configs))


# ---------------------------------------------------------------- synchronous


SYNC_CASES = [
    ("fedavg", {}, "FedAvgAggregator", {"client_weights_mode": "sample_size"}),
    (
        "fedavg",
        {},
        "FedAvgAggregator",
        {"client_weights_mode": "sample_size", "optimize_memory": True},
    ),
    ("fedavg", {"weighting": "equal"}, "FedAvgAggregator", {}),
    (
        "fedavgm",
        {"momentum": 0.7},
        "FedAvgMAggregator",
        {"client_weights_mode": "sample_size", "server_momentum_param_1": 0.7},
    ),
    (
        "fedadam",
        {"server_lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 0.01},
        "FedAdamAggregator",
        {
            "client_weights_mode": "sample_size",
            "server_learning_rate": 0.05,
            "server_momentum_param_1": 0.8,
            "server_momentum_param_2": 0.95,
            "server_adapt_param": 0.01,
        },
    ),
    (
        "fedyogi",
        {"server_lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 0.01},
        "FedYogiAggregator",
        {
            "client_weights_mode": "sample_size",
            "server_learning_rate": 0.05,
            "server_momentum_param_1": 0.8,
            "server_momentum_param_2": 0.95,
            "server_adapt_param": 0.01,
        },
    ),
]


@pytest.mark.parametrize(
    ("ours_name", "ours_kwargs", "cls_name", "configs"),
    SYNC_CASES,
    ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(SYNC_CASES)],
)
def test_sync_strategies_match_appfl(
    ours_name: str, ours_kwargs: dict[str, Any], cls_name: str, configs: dict[str, Any]
) -> None:
    gen = torch.Generator().manual_seed(1)
    ours = get_strategy(ours_name, **ours_kwargs)
    theirs = appfl(cls_name, **configs)
    init = adapter(gen)
    theirs.global_state = copy.deepcopy(init)  # both start from the same global model
    global_flat = SPEC.flatten(init)
    samples = {s: n for s, n in zip(SITES, (120, 40, 300, 7), strict=False)}
    for site, n in samples.items():
        theirs.set_client_sample_size(site, n)
    for version in range(4):
        base = SPEC.unflatten(global_flat, copy=True)
        locals_ = {s: local_model(gen, base) for s in SITES}
        updates = [Update(s, SPEC.flatten(m), samples[s], version, 10) for s, m in locals_.items()]
        global_flat = ours.aggregate(global_flat, updates, version)
        assert_same(global_flat, theirs.aggregate(copy.deepcopy(locals_)))


@pytest.mark.parametrize("name", ["FedAvgAggregator", "FedAvgMAggregator"])
def test_appfl_wrapper_matches_its_aggregator(name: str) -> None:
    configs = {
        "client_weights_mode": "sample_size",
        "server_momentum_param_1": 0.5,
        "optimize_memory": False,
    }
    gen = torch.Generator().manual_seed(2)
    wrapped = get_strategy(f"appfl:{name}", **configs)
    wrapped.set_layout(SPEC)  # type: ignore[attr-defined]
    direct = appfl(name, **configs)
    init = adapter(gen)
    direct.global_state = copy.deepcopy(init)
    global_flat = SPEC.flatten(init)
    for version in range(3):
        base = SPEC.unflatten(global_flat, copy=True)
        locals_ = {s: local_model(gen, base) for s in SITES[:3]}
        for i, s in enumerate(locals_):
            direct.set_client_sample_size(s, 10 * (i + 1))
        updates = [
            Update(s, SPEC.flatten(m), 10 * (i + 1), version, 5)
            for i, (s, m) in enumerate(locals_.items())
        ]
        global_flat = wrapped.aggregate(global_flat, updates, version)
        assert_same(global_flat, direct.aggregate(copy.deepcopy(locals_)))
    # the wrapper's state (APPFL's momentum etc.) survives a weights_only checkpoint
    buf = io.BytesIO()
    torch.save(wrapped.state_dict(), buf)
    resumed = get_strategy(f"appfl:{name}", **configs)
    resumed.set_layout(SPEC)  # type: ignore[attr-defined]
    resumed.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    nxt = [Update("alcf", SPEC.flatten(local_model(gen, SPEC.unflatten(global_flat))), 3, 3, 5)]
    torch.testing.assert_close(
        resumed.aggregate(global_flat, nxt, 3), wrapped.aggregate(global_flat, nxt, 3), **TOL
    )


def test_appfl_wrapper_without_layout_and_unknown_class() -> None:
    from crossfl.errors import UserError

    wrapped = get_strategy("appfl:FedAvgAggregator", client_weights_mode="sample_size")
    out = wrapped.aggregate(
        torch.zeros(2),
        [
            Update("a", torch.tensor([1.0, 2.0]), 1, 0, 1),
            Update("b", torch.tensor([5.0, 6.0]), 3, 0, 1),
        ],
        0,
    )
    assert torch.allclose(out, torch.tensor([4.0, 5.0]))
    with pytest.raises(UserError, match="FedAvgAggregator"):
        get_strategy("appfl:NoSuchAggregator")


# ---------------------------------------------------------------- asynchronous


def staleness_configs(fn: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(our kwargs, APPFL aggregator configs) for one staleness function."""
    if fn == "constant":
        return {"staleness_fn": "constant"}, {"staleness_fn": "constant"}
    if fn == "polynomial":
        return (
            {"staleness_fn": "polynomial", "a": 0.5},
            {"staleness_fn": "polynomial", "staleness_fn_kwargs": {"a": 0.5}},
        )
    return (
        {"staleness_fn": "hinge", "a": 10.0, "b": 2},
        {"staleness_fn": "hinge", "staleness_fn_kwargs": {"a": 10.0, "b": 2}},
    )


SAMPLES = {s: n for s, n in zip(SITES, (10, 20, 30, 40), strict=False)}


def appfl_server_side(cls_name: str, **configs: Any) -> Any:
    """An APPFL aggregator set up as APPFL 1.12's server sets it up before training.

    ``num_clients``: ``ServerAgent.__init__`` calls ``_set_num_clients``
    (appfl/agent/server.py:60), which writes the server's client count into
    ``aggregator_kwargs.num_clients`` (appfl/agent/server.py:662, or :665 when there are no
    aggregator kwargs) before ``_load_scheduler`` builds the aggregator from those kwargs
    (appfl/agent/server.py:417). Sample counts: every client answers a ``get_sample_size``
    task and the server calls ``set_sample_size`` -> ``set_client_sample_size`` for each
    before the first training task (appfl/service/appflx_entry_point.py:121-124).
    """
    theirs = appfl(cls_name, num_clients=len(SAMPLES), **configs)
    for site, n in SAMPLES.items():
        theirs.set_client_sample_size(site, n)
    return theirs


def async_run(ours: Any, theirs: Any, seed: int, arrivals: int = 14) -> int:
    """Random arrival order (mixed staleness); compare after every update. Returns flushes.

    Both sides know every site and its sample count before the first update (ours through
    ``register_sites``, APPFL through :func:`appfl_server_side`)."""
    gen = torch.Generator().manual_seed(seed)
    order = random.Random(seed)
    init = adapter(gen)
    theirs.global_state = copy.deepcopy(init)
    ours.register_sites(SAMPLES)
    global_flat, version = SPEC.flatten(init), 0
    started: dict[str, tuple[int, dict[str, torch.Tensor]]] = {}
    for site in SITES:  # every client downloads the initial model
        started[site] = (version, theirs.get_parameters(client_id=site))
    flushes = 0
    for _ in range(arrivals):
        site = order.choice(SITES)
        base_version, base = started[site]
        model = local_model(gen, base)
        expected = theirs.aggregate(site, copy.deepcopy(model))
        update = Update(site, SPEC.flatten(model), SAMPLES[site], base_version, 10)
        new = ours.aggregate(global_flat, [update], version)
        if new is not None:
            global_flat, version, flushes = new, version + 1, flushes + 1
        assert_same(global_flat, expected)
        started[site] = (version, theirs.get_parameters(client_id=site))
    return flushes


@pytest.mark.parametrize("fn", ["constant", "polynomial", "hinge"])
@pytest.mark.parametrize("weighting", ["equal", "num_samples"])
def test_fedasync_matches_appfl(fn: str, weighting: str) -> None:
    """Equal weights are 1 / num_clients; sample weights are shares of every registered
    site's samples, from the first update on."""
    ours_kw, configs = staleness_configs(fn)
    mode = "sample_size" if weighting == "num_samples" else "equal"
    ours = get_strategy("fedasync", alpha=0.6, weighting=weighting, **ours_kw)
    theirs = appfl_server_side("FedAsyncAggregator", alpha=0.6, client_weights_mode=mode, **configs)
    async_run(ours, theirs, seed=3)


@pytest.mark.slow
def test_fedasync_matches_appfl_default_memory_mode() -> None:
    ours = get_strategy("fedasync", alpha=0.5, staleness_fn="polynomial", a=1.0)
    theirs = appfl_server_side(
        "FedAsyncAggregator",
        alpha=0.5,
        staleness_fn="polynomial",
        staleness_fn_kwargs={"a": 1.0},
        optimize_memory=True,
    )
    async_run(ours, theirs, seed=10, arrivals=3)


@pytest.mark.parametrize("fn", ["constant", "polynomial", "hinge"])
@pytest.mark.parametrize("weighting", ["equal", "num_samples"])
def test_fedbuff_matches_appfl(fn: str, weighting: str) -> None:
    ours_kw, configs = staleness_configs(fn)
    mode = "sample_size" if weighting == "num_samples" else "equal"
    ours = get_strategy("fedbuff", K=3, alpha=1.5, weighting=weighting, **ours_kw)
    theirs = appfl_server_side(
        "FedBuffAggregator", K=3, alpha=1.5, client_weights_mode=mode, **configs
    )
    assert async_run(ours, theirs, seed=4, arrivals=13) == 13 // 3


@pytest.mark.parametrize("name", ["FedAsyncAggregator", "FedBuffAggregator"])
def test_appfl_wrapper_registers_sites_like_appfls_server(name: str) -> None:
    """``register_sites`` gives the wrapped aggregator ``num_clients`` and every sample count
    (a ``num_clients`` in the kwargs is overridden, as APPFL's server overrides it)."""
    configs = {"K": 2, "alpha": 0.7, "client_weights_mode": "sample_size", "optimize_memory": False}
    if name == "FedAsyncAggregator":
        configs = {"alpha": 0.7, "optimize_memory": False}  # equal weights: 1 / num_clients
    wrapped = get_strategy(f"appfl:{name}", num_clients=99, **configs)
    wrapped.set_layout(SPEC)  # type: ignore[attr-defined]
    theirs = appfl_server_side(name, **configs)
    async_run(wrapped, theirs, seed=13, arrivals=6)
    state = wrapped.state_dict()
    assert state["num_clients"] == len(SAMPLES) and state["client_sample_size"] == SAMPLES
    resumed = get_strategy(f"appfl:{name}", **configs)
    resumed.load_state_dict(state)
    again = resumed.state_dict()
    assert again["num_clients"] == len(SAMPLES) and again["client_sample_size"] == SAMPLES


def test_fedbuff_through_wrapper_buffers_like_ours() -> None:
    ours = get_strategy("fedbuff", K=2, alpha=0.5)
    wrapped = get_strategy("appfl:FedBuffAggregator", K=2, alpha=0.5)
    wrapped.set_layout(SPEC)  # type: ignore[attr-defined]
    for s in (ours, wrapped):
        s.register_sites({"a": 1, "b": 1})
    gen = torch.Generator().manual_seed(5)
    g = SPEC.flatten(adapter(gen))
    a = Update("a", SPEC.flatten(adapter(gen)), 1, 0, 1)
    b = Update("b", SPEC.flatten(adapter(gen)), 1, 0, 1)
    assert ours.aggregate(g, [a], 0) is None and wrapped.aggregate(g, [a], 0) is None
    torch.testing.assert_close(ours.aggregate(g, [b], 0), wrapped.aggregate(g, [b], 0), **TOL)


# ---------------------------------------------------------------- FedCompass


@pytest.mark.parametrize("fn", ["constant", "polynomial", "hinge"])
def test_fedcompass_mixing_matches_appfl_aggregator(fn: str) -> None:
    ours_kw, configs = staleness_configs(fn)
    gen = torch.Generator().manual_seed(6)
    ours = get_strategy("fedcompass", alpha=0.8, **ours_kw)
    ours.register_sites(SAMPLES)  # four sites: APPFL's num_clients
    theirs = appfl_server_side("FedCompassAggregator", alpha=0.8, **configs)
    init = adapter(gen)
    theirs.global_state = copy.deepcopy(init)
    g, version = SPEC.flatten(init), 5
    # one arrival alone, then a group of three with mixed staleness
    solo = local_model(gen, init)
    g = ours.mix(g, [Update("alcf", SPEC.flatten(solo), 1, 2, 10)], version)  # type: ignore[attr-defined]
    assert_same(g, theirs.aggregate("alcf", copy.deepcopy(solo), staleness=3))
    group = {s: local_model(gen, init) for s in SITES[1:]}
    bases = {"olcf": 6, "nersc": 3, "tacc": 0}
    updates = [Update(s, SPEC.flatten(m), 1, bases[s], 10) for s, m in group.items()]
    g = ours.mix(g, updates, version + 1)  # type: ignore[attr-defined]
    expected = theirs.aggregate(
        local_models=copy.deepcopy(group), staleness={s: version + 1 - b for s, b in bases.items()}
    )
    assert_same(g, expected)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class NoTimer:
    """Stands in for threading.Timer: window expiry is not exercised here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        pass


COMPASS_CFG = {
    "max_local_steps": 20,
    "min_local_steps": 4,
    "speed_momentum": 0.5,
    "latest_time_factor": 1.5,
}


def compass_pair(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock, alpha: float, sites: list[str]
) -> tuple[Any, Any]:
    """APPFL's CompassScheduler + FedCompassAggregator and ours, on the same fake clock, with
    ``num_clients`` set as APPFL's server sets it (the number of sites)."""
    import appfl.algorithm.scheduler.compass_scheduler as cs

    monkeypatch.setattr(cs.time, "time", clock)
    monkeypatch.setattr(cs.threading, "Timer", NoTimer)
    n = len(sites)
    sched = cs.CompassScheduler(
        DictConfig({**COMPASS_CFG, "num_clients": n, "optimize_memory": False}),
        appfl("FedCompassAggregator", alpha=alpha, num_clients=n),
        logging.getLogger("appfl-oracle"),
    )
    ours = get_strategy("fedcompass", alpha=alpha, **COMPASS_CFG)
    ours.register_sites({site: 1 for site in sites})
    ours.clock = clock  # type: ignore[attr-defined]
    ours.reset_clock()  # type: ignore[attr-defined]
    return sched, ours


def replay_compass(
    sched: Any,
    ours: Any,
    clock: FakeClock,
    sites: list[str],
    duration: Any,
    arrivals: int,
    seed: int,
) -> int:
    """Feed both the same arrivals at the same (fake) times; after every arrival both global
    models agree, and every site APPFL answers gets the same local steps from both.

    A site in an arrival group waits for its group's aggregation, as under APPFL; ``duration``
    (site, steps) gives how long a task runs. Returns the number of group aggregations."""
    gen = torch.Generator().manual_seed(seed)
    init = adapter(gen)
    sched.aggregator.global_state = copy.deepcopy(init)
    g, version = SPEC.flatten(init), 0
    plan = ClientPlan(local_steps=COMPASS_CFG["max_local_steps"], lr=1e-4)
    # site -> (arrival time, steps, base version, base model)
    running: dict[str, tuple[float, int, int, dict[str, torch.Tensor]]] = {}
    for site in sites:
        steps = ours.configure(site, version, plan).local_steps
        running[site] = (duration(site, steps), steps, version, copy.deepcopy(init))
    group_aggregations = 0
    pending: dict[str, Any] = {}  # group members waiting for their group's aggregation
    for _ in range(arrivals):
        site = min(running, key=lambda s: running[s][0])
        arrival, steps, base_version, base = running.pop(site)
        clock.t = arrival
        model = local_model(gen, base)
        result = sched.schedule(site, copy.deepcopy(model))
        # the client's own training time (a part of the task's time) does not set its speed:
        # APPFL measures from dispatch to arrival
        update = Update(
            site, SPEC.flatten(model), 1, base_version, steps, train_time_s=0.25 * steps
        )
        new = ours.aggregate(g, [update], version)
        if new is not None:
            g, version = new, version + 1
        assert_same(g, sched.aggregator.global_state)
        if isinstance(result, tuple):  # APPFL answered at once: single update or late
            answered = [(site, result)]
        else:
            pending[site] = result
            done = sorted(
                (s for s, f in pending.items() if f.done()),
                key=lambda s: sched.client_info[s]["speed"],
            )
            answered = [(s, pending.pop(s).result()) for s in done]
            group_aggregations += bool(done)
        for member, (_, meta) in answered:  # same order as APPFL assigned their groups
            ours_steps = ours.configure(member, version, plan).local_steps
            assert ours_steps == meta["local_steps"], member
            running[member] = (
                arrival + duration(member, ours_steps),
                ours_steps,
                version,
                SPEC.unflatten(g, copy=True),
            )
    return group_aggregations


def test_fedcompass_schedule_matches_appfl_compass_scheduler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same arrivals at the same (fake) times: same local steps, same groups, same models."""
    clock = FakeClock()
    sched, ours = compass_pair(monkeypatch, clock, alpha=0.7, sites=SITES)
    speeds = {"alcf": 1.0, "olcf": 2.3, "nersc": 4.1, "tacc": 9.0}  # seconds per local step
    jitter = random.Random(11)  # each task runs 0.8x to 1.2x its site's usual speed

    def duration(site: str, steps: int) -> float:
        return steps * speeds[site] * jitter.uniform(0.8, 1.2)

    try:
        groups = replay_compass(sched, ours, clock, SITES, duration, arrivals=30, seed=7)
    finally:
        sched.clean_up()
    # the scenario exercised arrival groups (not just solo updates) and several open groups
    assert groups >= 3 and sched.group_counter >= 4, (groups, sched.group_counter)


def test_fedcompass_late_update_superseded_by_the_sites_newer_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A site misses its group's window (its update waits in the general buffer), then its
    next update arrives in its new group's window before any group aggregation: APPFL keys
    both buffers by client, so the group aggregation uses only the newer update."""
    clock = FakeClock()
    sites = ["alcf", "olcf"]
    sched, ours = compass_pair(monkeypatch, clock, alpha=0.8, sites=sites)
    # alcf: 20 steps in 20 s (alone: mixed in, then its group expects it at t=40, window to
    # t=50); 40 s more (t=60, late: buffered); its new group expects it by 1.5 s/step x 20
    # steps and it arrives after 25 s, in the window. olcf arrives once, at t=500.
    scripted = {"alcf": [20.0, 40.0, 25.0, 1e4], "olcf": [500.0, 1e4]}

    def duration(site: str, steps: int) -> float:
        return scripted[site].pop(0)

    try:
        groups = replay_compass(sched, ours, clock, sites, duration, arrivals=4, seed=12)
    finally:
        sched.clean_up()
    assert groups == 1 and scripted == {"alcf": [], "olcf": []}  # every scripted task ran


class FakeTimers:
    """Stands in for threading.Timer on the fake clock: the test fires each timer when the
    clock reaches it, as APPFL's threads would."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.armed: list[Any] = []

    def __call__(self, interval: float, fn: Any, args: Any = (), kwargs: Any = None) -> Any:
        timers = self

        class Timer:
            def __init__(self) -> None:
                self.due, self.cancelled = timers.clock.t + interval, False

            def start(self) -> None:
                timers.armed.append(self)

            def cancel(self) -> None:
                self.cancelled = True

            def fire(self) -> None:
                timers.armed.remove(self)
                if not self.cancelled:
                    fn(*args, **(kwargs or {}))

        return Timer()

    def next(self) -> Any:
        live = [t for t in self.armed if not t.cancelled]
        return min(live, key=lambda t: t.due) if live else None


def test_fedcompass_matches_appfl_with_its_group_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    """High jitter (a task takes 0.3x to 2.5x its site's usual time), APPFL's group timers
    firing at each window's end: arrivals after a window, general-buffered updates taken in
    by a timer, groups aggregated without an arrival. Our FedCompass is given the same
    moments (``flush_due`` when APPFL's timer fires); both global models agree after every
    event, and every site APPFL releases gets the same local steps from both."""
    import appfl.algorithm.scheduler.compass_scheduler as cs

    clock = FakeClock()
    timers = FakeTimers(clock)
    monkeypatch.setattr(cs.time, "time", clock)
    monkeypatch.setattr(cs.threading, "Timer", timers)
    n, alpha = len(SITES), 0.8
    sched = cs.CompassScheduler(
        DictConfig({**COMPASS_CFG, "num_clients": n, "optimize_memory": False}),
        appfl("FedCompassAggregator", alpha=alpha, num_clients=n),
        logging.getLogger("appfl-oracle"),
    )
    ours = get_strategy("fedcompass", alpha=alpha, **COMPASS_CFG)
    ours.register_sites({site: 1 for site in SITES})
    ours.clock = clock  # type: ignore[attr-defined]
    ours.reset_clock()  # type: ignore[attr-defined]
    speeds = {"alcf": 1.0, "olcf": 2.3, "nersc": 4.1, "tacc": 9.0}
    jitter = random.Random(3)
    gen = torch.Generator().manual_seed(21)
    init = adapter(gen)
    sched.aggregator.global_state = copy.deepcopy(init)
    g, version = SPEC.flatten(init), 0
    plan = ClientPlan(local_steps=COMPASS_CFG["max_local_steps"], lr=1e-4)
    running: dict[str, tuple[float, int, int, dict[str, torch.Tensor]]] = {}

    def start(site: str, steps: int) -> None:
        took = steps * speeds[site] * jitter.uniform(0.3, 2.5)
        running[site] = (clock.t + took, steps, version, SPEC.unflatten(g, copy=True))

    for site in SITES:
        start(site, ours.configure(site, version, plan).local_steps)
    pending: dict[str, Any] = {}
    events, timer_aggregations, late = 0, 0, 0
    try:
        while events < 60:
            site = min(running, key=lambda s: running[s][0]) if running else None
            timer = timers.next()
            if timer is not None and (site is None or timer.due < running[site][0]):
                clock.t = timer.due
                before = sched.global_timestamp
                timer.fire()
                new = ours.flush_due(g, version)  # type: ignore[attr-defined]
                assert (new is not None) == (sched.global_timestamp > before)
                if new is not None:
                    g, version = new, version + 1
                    timer_aggregations += 1
                answered = []
            else:
                assert site is not None
                arrival, steps, base_version, base = running.pop(site)
                clock.t = arrival
                model = local_model(gen, base)
                gid = sched.client_info.get(site, {}).get("goa", -1)
                group = sched.arrival_group.get(gid)
                late += group is not None and arrival > group["latest_arrival_time"]
                result = sched.schedule(site, copy.deepcopy(model))
                update = Update(site, SPEC.flatten(model), 1, base_version, steps)
                new = ours.aggregate(g, [update], version)
                if new is not None:
                    g, version = new, version + 1
                answered = [(site, result)] if isinstance(result, tuple) else []
                if not answered:
                    pending[site] = result
            assert_same(g, sched.aggregator.global_state)
            done = sorted(
                (s for s, f in pending.items() if f.done()),
                key=lambda s: sched.client_info[s]["speed"],
            )
            answered += [(s, pending.pop(s).result()) for s in done]
            assert ours.held_sites() == set(pending)  # type: ignore[attr-defined]
            for member, (_, meta) in answered:
                steps = ours.configure(member, version, plan).local_steps
                assert steps == meta["local_steps"], member
                start(member, steps)
            events += 1
    finally:
        sched.clean_up()
    assert timer_aggregations >= 2 and late >= 3, (timer_aggregations, late)


# ---------------------------------------------------------------- FedQueue


# APPFL 1.12's "exponential" staleness calls torch.exp on a Python float and raises
# TypeError, so only constant and harmonic have an oracle; exponential is checked against
# exp(-beta u) in test_strategies.py.
@pytest.mark.parametrize("fn", ["constant", "harmonic"])
def test_fedqueue_factors_match_appfl_aggregator(fn: str) -> None:
    gen = torch.Generator().manual_seed(8)
    ours = get_strategy("fedqueue", staleness_fn=fn, beta=0.3)
    theirs = appfl("FedQueueAggregator", staleness_fn=fn, staleness_fn_kwargs={"beta": 0.3})
    init = adapter(gen)
    theirs.global_state = copy.deepcopy(init)
    models = {s: local_model(gen, init) for s in SITES}
    samples = {"alcf": 5, "olcf": 50, "nersc": 20, "tacc": 1}
    bases = {"alcf": 4, "olcf": 2, "nersc": 4, "tacc": 0}
    for s, n in samples.items():
        theirs.set_client_sample_size(s, n)
    updates = [Update(s, SPEC.flatten(m), samples[s], bases[s], 10) for s, m in models.items()]
    factors = ours.factors(updates, 4)  # type: ignore[attr-defined]
    expected = theirs.aggregate(
        copy.deepcopy(models),
        staleness={s: 4 - b for s, b in bases.items()},
        local_steps={s: 10 for s in SITES},
    )
    mixed = sum(f * u.params for f, u in zip(factors, updates, strict=False))
    assert_same(mixed, expected)


@pytest.mark.slow
def test_fedqueue_rounds_match_appfl_queue_scheduler() -> None:
    """Admission, late carry-over, staleness, local steps and learning rates per round."""
    import appfl.algorithm.scheduler.queue_scheduler as qs

    cfg = {
        "t_sync": 100.0,
        "theta": 5.0,
        "q_init": 2.0,
        "beta_queue": 0.5,
        "alpha_compute": 0.5,
        "alpha_admission": 0.2,
        "warm_up_steps": 3,
    }
    sites = SITES[:3]
    sched = qs.QueueScheduler(
        DictConfig({**cfg, "num_clients": len(sites), "lr_base": 0.01}),
        appfl("FedQueueAggregator", staleness_fn="harmonic", staleness_fn_kwargs={"beta": 0.5}),
        logging.getLogger("appfl-oracle"),
    )
    ours = get_strategy("fedqueue", staleness_fn="harmonic", beta=0.5, **cfg)
    gen = torch.Generator().manual_seed(9)
    init = adapter(gen)
    sched.aggregator.global_state = copy.deepcopy(init)
    samples = {"alcf": 30, "olcf": 10, "nersc": 60}
    for s, n in samples.items():
        sched.aggregator.set_client_sample_size(s, n)
    # queue waits per round; 45 s is past the 22 s admission deadline (q + 0.2 t_sync)
    waits = [
        {"alcf": 1.0, "olcf": 45.0, "nersc": 3.0},
        {"alcf": 2.0, "nersc": 4.0},  # olcf sits out: its update waits in APPFL
        {"alcf": 30.0, "olcf": 5.0, "nersc": 1.0},
        {"olcf": 2.0, "nersc": 2.0},
    ]
    step_time = {"alcf": 0.5, "olcf": 2.0, "nersc": 1.0}
    g, version = SPEC.flatten(init), 0
    plan = ClientPlan(local_steps=3, lr=0.01)
    base = {s: (0, copy.deepcopy(init), ours.configure(s, 0, plan)) for s in sites}
    pending: dict[str, Any] = {}  # APPFL futures not yet answered (late updates wait)
    try:
        for round_waits in waits:
            updates = []
            for site, wait in round_waits.items():
                base_version, model0, site_plan = base[site]
                model = local_model(gen, model0)
                pending[site] = sched.schedule(
                    site,
                    copy.deepcopy(model),
                    queue_time=wait,
                    compute_second_per_step=step_time[site],
                )
                updates.append(
                    Update(
                        site,
                        SPEC.flatten(model),
                        samples[site],
                        base_version,
                        site_plan.local_steps,
                        train_time_s=step_time[site] * site_plan.local_steps,
                        queue_wait_s=wait,
                    )
                )
            g = ours.aggregate(g, updates, version)
            version += 1
            assert_same(g, sched.aggregator.global_state)
            for site in [s for s, fut in pending.items() if fut.done()]:
                _, meta = pending.pop(site).result()
                mine = ours.configure(site, version, plan)
                assert mine.local_steps == meta["local_steps"], site
                assert math.isclose(mine.lr, meta["learning_rate"], rel_tol=1e-9), site
                base[site] = (version, SPEC.unflatten(g, copy=True), mine)
        assert not pending
    finally:
        sched.clean_up()


def test_is_async_knows_appfl_classes() -> None:
    from crossfl.server.strategies import is_async

    assert is_async("appfl:FedBuffAggregator") and is_async("appfl:FedCompassAggregator")
    assert not is_async("appfl:FedAvgAggregator") and not is_async("appfl:FedQueueAggregator")
    s = get_strategy("appfl:FedAsyncAggregator")
    assert s.is_async and s.name == "appfl:FedAsyncAggregator"


def test_appfl_missing_required_config_is_a_user_error() -> None:
    from crossfl.errors import UserError

    with pytest.raises(UserError, match="FedBuffAggregator rejected its configuration"):
        get_strategy("appfl:FedBuffAggregator")  # K is required
