"""The simulation core: virtual clock, queue models, scenarios, pilot lifecycle,
simulated executors, result cache and calibration. No timing assertions: every time
checked here is virtual, and every draw is seeded."""

from __future__ import annotations

import json
import math
import random
import statistics
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future
from pathlib import Path
from typing import Any

import pytest
import yaml
from globus_compute_sdk.errors import TaskExecutionFailed

from crossfl.clock import RealClock, SimulationStalled, VirtualClock, bind_strategy_clock
from crossfl.errors import UserError
from crossfl.simulate import calibrate
from crossfl.simulate.cache import ResultCache, payload_digest
from crossfl.simulate.executor import InstantExecutor, SimulatedSiteExecutor, simulated_sites
from crossfl.simulate.queues import Z90, QueueModel
from crossfl.simulate.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[1]
QUEUES = ROOT / "deploy" / "queues"

CALLS: list[dict[str, Any]] = []


def toy_train(task: dict[str, Any]) -> dict[str, Any]:
    """A stand-in site function: records the call, returns a result shaped like
    train_round's (real timings that the simulation must replace)."""
    CALLS.append(task)
    if task.get("fail"):
        raise ValueError("bad task: fail was set")
    return {
        "adapter": b"x" * 100,
        "num_samples": 10,
        "train_loss": 1.0,
        "first_loss": 2.0,
        "steps": task["local_steps"],
        "started_at": 1e9,
        "finished_at": 1e9 + 5,
        "timings": {"load_s": 3.0, "train_s": 4.0, "serialize_s": 0.5},
        "device": "cpu",
        "host": "here",
        "pid": 1,
        "cache_hit": True,
    }


def scenario(wait: dict[str, Any] | None = None, **pilot: Any) -> Scenario:
    return Scenario.model_validate(
        {
            "name": "test",
            "seed": 0,
            "facilities": {
                "hpc": {
                    "queues": {
                        "q": {
                            "wait": wait
                            or {"model": "fixed", "wait_s": 100.0, "assumption": "test"}
                        }
                    }
                }
            },
            "sites": [
                {
                    "name": "a",
                    "facility": "hpc",
                    "queue": "q",
                    "pilot": {"walltime": "01:00:00", "assumption": "test", **pilot},
                    "speed": {
                        "seconds_per_step": 2.0,
                        "load_cold_s": 30.0,
                        "load_warm_s": 1.0,
                        "assumption": "test",
                    },
                    "transfer": {"down_s": 1.0, "up_s": 2.0, "assumption": "test"},
                }
            ],
        }
    )


def site(
    sc: Scenario,
    clock: VirtualClock,
    seed: int = 0,
    records: list | None = None,
    cache: ResultCache | None = None,
) -> SimulatedSiteExecutor:
    return SimulatedSiteExecutor(
        "a",
        sc.sites[0],
        sc,
        clock,
        seed=seed,
        cache=cache,
        on_record=None if records is None else records.append,
    )


def task(steps: int = 10, **extra: Any) -> dict[str, Any]:
    return {"local_steps": steps, "round": 1, **extra}


# ------------------------------------------------------------------ the clock


def test_virtual_clock_runs_events_in_time_then_submission_order() -> None:
    clock = VirtualClock()
    seen: list[tuple[str, float]] = []
    for name, at in (("c", 5.0), ("a", 1.0), ("b", 5.0)):
        clock.call_at(at, lambda n=name: seen.append((n, clock.now())))
    cancelled = clock.call_at(3.0, lambda: seen.append(("x", clock.now())))
    cancelled.cancel()
    clock.run_until(4.0)
    assert seen == [("a", 1.0)] and clock.now() == 4.0
    clock.sleep(10.0)
    assert seen == [("a", 1.0), ("c", 5.0), ("b", 5.0)] and clock.now() == 14.0


def test_virtual_wait_matches_concurrent_futures_semantics() -> None:
    clock = VirtualClock()
    f1, f2 = Future(), Future()
    clock.call_at(10.0, lambda: f1.set_result(1))
    clock.call_at(20.0, lambda: f2.set_exception(ValueError("x")))
    done, not_done = clock.wait([f1, f2], timeout=5.0, return_when=FIRST_COMPLETED)
    assert (done, not_done, clock.now()) == (set(), {f1, f2}, 5.0)  # timed out in virtual time
    done, _ = clock.wait([f1, f2], return_when=FIRST_COMPLETED)
    assert done == {f1} and clock.now() == 10.0
    done, _ = clock.wait([f1, f2], return_when=FIRST_EXCEPTION)
    assert done == {f1, f2} and clock.now() == 20.0
    assert clock.wait([f1, f2], return_when=ALL_COMPLETED).not_done == set()
    with pytest.raises(SimulationStalled):
        clock.wait([Future()])
    with pytest.raises(TimeoutError):
        clock.result(Future(), timeout=3.0)
    assert clock.now() == 23.0


def test_real_clock_is_wall_time_and_concurrent_futures() -> None:
    f: Future = Future()
    f.set_result(7)
    clock = RealClock()
    assert clock.wait([f], timeout=0).done == {f} and clock.result(f) == 7
    assert abs(clock.now() - __import__("time").time()) < 60


def test_fedcompass_reads_the_virtual_clock() -> None:
    from crossfl.server.strategies import get_strategy

    clock = VirtualClock(start=1000.0)
    strategy = get_strategy("fedcompass")
    bind_strategy_clock(strategy, clock)
    assert strategy.now() == 0.0
    clock.sleep(3600.0)
    assert strategy.now() == 3600.0
    plain = get_strategy("fedavg")
    bind_strategy_clock(plain, clock)  # no clock of its own: untouched
    assert not hasattr(plain, "clock")


# ------------------------------------------------------------------ queue models


def test_appfl_lognormal_draws_exactly_what_appfl_draws() -> None:
    from appfl.algorithm.scheduler import QueueScheduler
    from omegaconf import OmegaConf

    # a YAML list arrives as a ListConfig, which APPFL 1.12 cannot parse (it splits
    # str(value) on commas): the comma string is the form it reads
    configs = OmegaConf.create(
        {
            "num_clients": 2,
            "simulate_queue": True,
            "queue_mode": "lognormal",
            "queue_means": "5.0,50.0",
            "queue_sigma": 0.8,
            "queue_seed": 3,
        }
    )
    appfl = QueueScheduler(configs, None, None)
    theirs = [appfl._sample_queue_delay(cid) for cid in ("1", "2", "1", "2", "1")]
    models = [
        QueueModel.model_validate(
            {"wait": {"model": "appfl_lognormal", "mean_s": m, "sigma": 0.8, "source": "APPFL"}}
        )
        for m in (5.0, 50.0)
    ]
    rng = random.Random(3)  # APPFL shares one stream over its clients, in call order
    ours = [models[i].sample(rng, 1, 3600.0) for i in (0, 1, 0, 1, 0)]
    assert ours == theirs
    default = QueueModel.model_validate({"wait": {"model": "appfl_lognormal", "source": "APPFL"}})
    assert (default.wait.mean_s, default.wait.sigma) == (2.0, 0.4)  # q_init, queue_sigma


def test_lognormal_by_median_and_p90_and_shape_bins() -> None:
    q = QueueModel.model_validate(
        {
            "wait": {
                "model": "lognormal",
                "median_s": 600.0,
                "p90_s": 3600.0,
                "assumption": "test",
            },
            "shape_bins": [
                {"max_nodes": 2, "max_walltime": "01:00:00", "factor": 0.5, "assumption": "t"},
                {"max_nodes": 10, "factor": 2.0, "assumption": "t"},
            ],
        }
    )
    assert q.wait.spread == pytest.approx(math.log(6.0) / Z90)
    rng = random.Random(1)
    draws = sorted(q.wait.sample(rng) for _ in range(20000))
    assert draws[10000] == pytest.approx(600.0, rel=0.05)
    assert draws[18000] == pytest.approx(3600.0, rel=0.08)
    assert q.factor(1, 1800) == 0.5 and q.factor(2, 7200) == 2.0 and q.factor(64, 60) == 1.0
    assert q.expected_wait_s(5, 60) == pytest.approx(2 * 600 * math.exp(q.wait.spread**2 / 2))


@pytest.mark.parametrize(
    "wait, message",
    [
        ({"model": "fixed", "wait_s": 1.0}, "exactly one of `source:`"),
        (
            {"model": "fixed", "wait_s": 1.0, "source": "s", "assumption": "a"},
            "exactly one of `source:`",
        ),
        ({"model": "lognormal", "median_s": 10.0, "assumption": "a"}, "exactly one of sigma"),
        ({"model": "gamma", "assumption": "a"}, "model: appfl_lognormal, lognormal or fixed"),
        ({"model": "fixed", "wait_s": -1, "assumption": "a"}, "greater than or equal to 0"),
    ],
)
def test_bad_queue_models_name_file_field_and_fix(tmp_path: Path, wait: dict, message: str) -> None:
    raw = yaml.safe_load((QUEUES / "calm.yaml").read_text())
    first = next(iter(raw["facilities"]))
    queue = next(iter(raw["facilities"][first]["queues"]))
    raw["facilities"][first]["queues"][queue]["wait"] = wait
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as err:
        load_scenario(bad)
    text = str(err.value)
    assert text.startswith(f"{bad}: facilities.{first}.queues.{queue}.wait")
    assert message in text and "(fix: " in text


def test_bad_site_profiles_are_named(tmp_path: Path) -> None:
    raw = yaml.safe_load((QUEUES / "calm.yaml").read_text())
    second = raw["sites"][1]["name"]
    raw["sites"][1]["queue"] = "nowhere"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="names queue 'nowhere'"):
        load_scenario(bad)
    raw["sites"][1]["queue"] = raw["sites"][0]["queue"]
    raw["sites"][1]["facility"] = raw["sites"][0]["facility"]
    raw["sites"][1]["speed"]["seconds_per_stepp"] = 1
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        UserError, match=rf"sites\[{second}\]\.speed\.seconds_per_stepp: unknown field"
    ):
        load_scenario(bad)
    bad.write_text("name: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_scenario(bad)
    with pytest.raises(UserError, match="not found"):
        load_scenario(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted(QUEUES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.sites
    for profile in sc.sites:
        assert sc.queue_of(profile).expected_wait_s(1, 3600.0) >= 0


def test_shipped_high_variance_waits_vary_more_than_calm() -> None:
    def spread(sc: Scenario) -> float:
        rng = random.Random(0)
        waits = [sc.queue_of(p).sample(rng, 1, 3600.0) for p in sc.sites for _ in range(2000)]
        return statistics.pstdev(waits)

    assert spread(load_scenario(QUEUES / "high-variance.yaml")) > 5 * spread(
        load_scenario(QUEUES / "calm.yaml")
    )


def test_profiles_are_assigned_by_name_then_in_order() -> None:
    sc = Scenario.model_validate(
        {
            **scenario().model_dump(),
            "sites": [
                {**scenario().sites[0].model_dump(), "name": n} for n in ("p1", "p2", "beta")
            ],
        }
    )
    got = {k: v.name for k, v in sc.assign(["alpha", "beta", "gamma", "delta"]).items()}
    assert got == {"alpha": "p1", "beta": "beta", "gamma": "p2", "delta": "p1"}


# ------------------------------------------------------------------ the pilot lifecycle


def run_one(ex: SimulatedSiteExecutor, clock: VirtualClock, payload: dict[str, Any]) -> Any:
    future = ex.submit(toy_train, payload)
    return clock.result(future)


def test_first_task_pays_queue_and_cold_load_then_a_warm_pilot_is_reused() -> None:
    clock, records = VirtualClock(), []
    ex = site(scenario(), clock, records=records)
    r1 = run_one(ex, clock, task(10))
    # down 1 s; poll at 5 s submits the block; queue 100 s; cold load 30 + 10 x 2 s; up 2 s
    assert r1["started_at"] == 105.0 and r1["finished_at"] == 155.0 and clock.now() == 157.0
    assert r1["timings"] == {"load_s": 30.0, "train_s": 20.0, "serialize_s": 0.0}
    assert r1["cache_hit"] is False and r1["simulated"]["cold"] is True
    assert r1["adapter"] == b"x" * 100 and r1["steps"] == 10  # the real result, re-timed
    r2 = run_one(ex, clock, task(5))  # the block is still up (idle < 120 s): no queue
    assert r2["started_at"] == 158.0 and r2["timings"]["load_s"] == 1.0 and r2["cache_hit"] is True
    assert r2["host"] == r1["host"] and records == []
    ex.shutdown()
    assert [r["end_reason"] for r in records] == ["shutdown"]
    assert records[0]["node_hours"] == pytest.approx((clock.now() - 105.0) / 3600)


def test_idle_pilot_is_released_and_the_next_task_queues_again() -> None:
    clock, records = VirtualClock(), []
    ex = site(scenario(), clock, records=records)
    r1 = run_one(ex, clock, task(10))  # worker idle from 155 s
    clock.sleep(500.0)
    # the strategy notices at its poll at 155 s and releases at the first poll more than
    # 120 s later: 280 s (Parsl: idle_duration > max_idletime, polled every 5 s)
    assert [(r["end_reason"], r["ended_at"]) for r in records] == [("idle", 280.0)]
    assert records[0]["node_hours"] == pytest.approx((280.0 - r1["started_at"]) / 3600)
    r2 = run_one(ex, clock, task(10))
    assert r2["simulated"]["block"] == 1 and r2["cache_hit"] is False
    assert r2["started_at"] - (657.0 + 1.0) >= 100.0  # a new pilot, a new queue wait


def test_min_blocks_keep_the_pilot_and_init_blocks_start_at_once() -> None:
    clock, records = VirtualClock(), []
    ex = site(scenario(init_blocks=1, min_blocks=1), clock, records=records)
    clock.sleep(400.0)  # init block submitted at 0 s, up at 100 s, never released
    r1 = run_one(ex, clock, task(10))
    assert r1["started_at"] == 401.0 and r1["cache_hit"] is False and records == []


def test_a_policy_can_keep_a_pilot_warm_from_now_on() -> None:
    clock, records = VirtualClock(), []
    ex = site(scenario(), clock, records=records)
    run_one(ex, clock, task(10))  # idle from 155 s; release due at 280 s
    clock.sleep(60.0)
    ex.set_idle(max_idletime_s=3600.0)  # at 217 s: the timer restarts from the next poll
    clock.sleep(600.0)
    assert records == []
    assert run_one(ex, clock, task(10))["cache_hit"] is True
    ex.set_idle(max_idletime_s=0.0)
    clock.sleep(10.0)
    assert [r["end_reason"] for r in records] == ["idle"]
    with pytest.raises(Exception, match="max_blocks 1 is below min_blocks 2"):
        ex.set_idle(min_blocks=2)


def test_walltime_kills_a_running_task_as_a_lost_manager_and_a_new_pilot_follows() -> None:
    from crossfl.server.faults import is_system_failure

    clock, records = VirtualClock(), []
    ex = site(scenario(walltime="00:05:00"), clock, records=records)
    future = ex.submit(toy_train, task(1000))  # 2000 s of training in a 300 s pilot
    clock.wait([future])
    exc = future.exception()
    assert "ManagerLost" in str(exc) and is_system_failure(exc)
    assert records[0]["end_reason"] == "walltime" and records[0]["ended_at"] == 405.0
    assert clock.now() == 405.0 + 120.0  # reported after Parsl's heartbeat threshold
    # the lost task was still outstanding at the next poll: a new block was asked for
    assert len(ex.sim.blocks) == 2 and ex.sim.blocks[1].submitted_at == 405.0


def test_preemption_ends_pilots_early_and_deterministically() -> None:
    def lifetimes(seed: int) -> list[tuple[str, float]]:
        clock, records = VirtualClock(), []
        ex = site(
            scenario(preemption_per_hour=6.0, walltime="10:00:00"),
            clock,
            seed=seed,
            records=records,
        )
        for _ in range(3):
            with pytest.raises(TaskExecutionFailed, match="ManagerLost"):
                run_one(ex, clock, task(100000))
        return [(r["end_reason"], r["held_s"]) for r in records]

    first = lifetimes(1)
    assert [reason for reason, _ in first] == ["preempted"] * 3
    assert first == lifetimes(1) and first != lifetimes(2)


def test_per_task_mode_pays_a_wait_for_every_task() -> None:
    sc = scenario(
        {"model": "appfl_lognormal", "mean_s": 50.0, "sigma": 0.4, "source": "APPFL"},
        mode="per_task",
    )
    clock, records = VirtualClock(), []
    ex = site(sc, clock, records=records)
    results = [run_one(ex, clock, task(10)) for _ in range(3)]
    assert all(r["cache_hit"] is False for r in results)
    assert [r["end_reason"] for r in records] == ["done"] * 3
    waits = [r["queue_wait_s"] for r in records]
    assert len(set(waits)) == 3 and all(w > 0 for w in waits)
    assert sum(r["node_hours"] for r in records) == pytest.approx(3 * (30 + 20) / 3600)


def test_tasks_queue_first_come_first_served_on_one_block() -> None:
    clock = VirtualClock()
    ex = site(scenario(), clock)
    futures = [ex.submit(toy_train, task(10, n=i)) for i in range(3)]
    clock.wait(futures)
    starts = [f.result()["started_at"] for f in futures]
    assert starts == sorted(starts) and len({f.result()["host"] for f in futures}) == 1
    assert [f.result()["cache_hit"] for f in futures] == [False, True, True]


def test_a_failing_site_function_is_a_task_failure_not_retried() -> None:
    from crossfl.endpoints import failure_summary
    from crossfl.server.faults import is_system_failure

    clock = VirtualClock()
    ex = site(scenario(), clock)
    future = ex.submit(toy_train, task(10, fail=True))
    clock.wait([future])
    exc = future.exception()
    assert failure_summary(exc) == "ValueError: bad task: fail was set" and not is_system_failure(
        exc
    )


def test_a_cancelled_task_still_holds_its_worker_as_at_globus_compute() -> None:
    """A task registered with the web service cannot be cancelled there (the SDK's
    Executor.shutdown: "Tasks cannot be cancelled once they are registered"): the server
    gives up on its future, but the endpoint runs it, and the next task waits for it."""
    clock = VirtualClock()
    ex = site(scenario(), clock)
    CALLS.clear()
    future = ex.submit(toy_train, task(100, tag="abandoned"))  # 200 s of steps
    clock.sleep(50.0)
    assert future.cancel()
    after = ex.submit(toy_train, task(10, tag="next"))
    clock.wait([after])
    # block up at 105 s: the abandoned task holds it (cold load 30 + 200 s) until 335 s
    assert after.result()["started_at"] == pytest.approx(335.0)
    assert after.result()["cache_hit"] is True  # the same worker, warm
    assert [c["tag"] for c in CALLS] == ["next"]  # nobody reads it: not trained for real


def test_a_pilot_asked_for_ahead_starts_while_the_current_one_runs_and_drains() -> None:
    """The dispatch policy's levers on a simulated endpoint: the next pilot submitted before
    the current one's walltime ends, and a drain time (HTEX drain_period) so no task is
    started that its pilot cannot finish."""
    clock, records = VirtualClock(), []
    ex = site(scenario(walltime="00:10:00"), clock, records=records)
    ex.set_idle(max_idletime_s=3600.0)  # kept warm
    ex.set_drain(100.0)  # blocks started from now on take no task in their last 100 s
    run_one(ex, clock, task(10))  # block 0 up at 105 s, walltime end 705 s
    assert ex.pilots() == [(5.0, 105.0, 705.0)]
    assert ex.request_pilot() and not ex.request_pilot()  # one ahead at most, none queued twice
    clock.sleep(200.0)  # block 1 queued 100 s: up at 257 s
    assert [p[1] for p in ex.pilots()] == [105.0, 257.0]
    clock.sleep(400.0 - clock.now())
    late = ex.submit(toy_train, task(10))
    clock.wait([late])
    assert late.result()["simulated"]["block"] == 1  # the block with most walltime left
    clock.sleep(700.0 - clock.now())
    assert ("drained", 605.0) in [(r["end_reason"], r["ended_at"]) for r in records]


def test_the_clock_stops_at_its_horizon() -> None:
    from crossfl.clock import HorizonReached

    clock = VirtualClock(horizon=100.0)
    ran: list[float] = []
    clock.call_at(50.0, lambda: ran.append(clock.now()))
    clock.call_at(150.0, lambda: ran.append(clock.now()))
    with pytest.raises(HorizonReached):
        clock.wait([Future()])
    assert ran == [50.0] and clock.now() == 100.0
    with pytest.raises(HorizonReached):
        VirtualClock(horizon=10.0).sleep(11.0)


def test_replays_are_deterministic_by_seed_and_paired_across_sites() -> None:
    wait = {"model": "lognormal", "median_s": 300.0, "sigma": 1.0, "assumption": "test"}
    sc = scenario(wait)

    def waits(seed: int, names: list[str]) -> dict[str, list[float]]:
        clock = VirtualClock()
        exs = simulated_sites(sc, names, clock, seed=seed)
        for _ in range(3):
            fs = [ex.submit(toy_train, task(10)) for ex in exs.values()]
            clock.wait(fs)
            clock.sleep(1000.0)  # idle: every pilot is released, the next round queues again
        return {n: [b.wait_s for b in ex.sim.blocks] for n, ex in exs.items()}

    one = waits(0, ["alpha", "beta"])
    assert one == waits(0, ["alpha", "beta"]) and one != waits(1, ["alpha", "beta"])
    assert waits(0, ["alpha"])["alpha"] == one["alpha"]  # another site draws from its own stream
    assert len(one["alpha"]) == 3


def test_sync_rounds_release_a_fast_sites_pilot_while_a_straggler_queues() -> None:
    """The first cheap check, in simulation: with the engine's 120 s max_idletime, a
    site that finishes a round more than ~2 minutes before the slowest one (here a site
    that queues 30 min for a fresh job every round) loses its pilot and queues again
    next round; a long max_idletime keeps it."""

    def rounds(max_idletime_s: float) -> list[bool]:
        sc = Scenario.model_validate(
            {
                "name": "t",
                "facilities": {
                    "hpc": {
                        "queues": {
                            "fast": {"wait": {"model": "fixed", "wait_s": 60.0, "assumption": "t"}},
                            "slow": {
                                "wait": {"model": "fixed", "wait_s": 1800.0, "assumption": "t"}
                            },
                        }
                    }
                },
                "sites": [
                    {
                        "name": n,
                        "facility": "hpc",
                        "queue": n,
                        "pilot": {
                            "max_idletime_s": max_idletime_s,
                            "walltime": "12:00:00",
                            "mode": mode,
                            "assumption": "t",
                        },
                        "speed": {"seconds_per_step": 1.0, "load_cold_s": 10.0, "assumption": "t"},
                    }
                    for n, mode in (("fast", "pilot"), ("slow", "per_task"))
                ],
            }
        )
        clock = VirtualClock()
        exs = simulated_sites(sc, ["fast", "slow"], clock, seed=0)
        cold = []
        for rnd in range(3):
            fs = {n: ex.submit(toy_train, task(20, round=rnd)) for n, ex in exs.items()}
            clock.wait(fs.values())
            cold.append(not fs["fast"].result()["cache_hit"])
        return cold

    assert rounds(120.0) == [True, True, True]  # every round pays the fast site's queue again
    assert rounds(7200.0) == [True, False, False]


# ------------------------------------------------------------------ the result cache


def test_payload_digest_is_canonical_and_covers_adapter_bytes(tmp_path: Path) -> None:
    a = {"local_steps": 3, "adapter": b"\x00\x01", "lora": {"r": 4, "alpha": 8.0}}
    b = {"lora": {"alpha": 8.0, "r": 4}, "adapter": b"\x00\x01", "local_steps": 3}
    assert payload_digest(toy_train, a) == payload_digest(toy_train, b)
    assert payload_digest(toy_train, a) != payload_digest(toy_train, {**a, "adapter": b"\x00\x02"})
    assert payload_digest(toy_train, a) != payload_digest(toy_train, {**a, "local_steps": 4})
    assert payload_digest(toy_train, {**a, "result_path": "/x"}) is None
    data = tmp_path / "d.jsonl"
    data.write_text("one")
    before = payload_digest(toy_train, {**a, "data_path": str(data)})
    data.write_text("other")  # same path, new content: a new key
    assert payload_digest(toy_train, {**a, "data_path": str(data)}) != before


def test_identical_tasks_train_once_across_replays_and_processes(tmp_path: Path) -> None:
    CALLS.clear()
    disk = tmp_path / "cache"
    for seed in range(3):
        clock = VirtualClock()
        ex = site(scenario(), clock, seed=seed, cache=ResultCache(disk))
        assert run_one(ex, clock, task(10, adapter=b"g"))["simulated"]["reused_result"] is (
            seed > 0
        )
    assert len(CALLS) == 1 and len(list(disk.glob("*.pkl"))) == 1
    instant = InstantExecutor(ResultCache(disk))
    assert instant.submit(toy_train, task(10, adapter=b"g")).result()["steps"] == 10
    assert len(CALLS) == 1


# ------------------------------------------------------------------ calibration


def write_run(run_dir: Path, tasks: list[dict[str, Any]], entries: list[dict[str, Any]]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "experiment.yaml").write_text(yaml.safe_dump({"name": "x", "sites": entries}))
    lines = [{"kind": "baseline", "round": 0, "val_loss": 3.0}] + tasks
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return run_dir


def record(site: str, queue_s: float, warm: bool, **extra: Any) -> dict[str, Any]:
    """A task record as the driver writes it (crossfl.server.records.TaskRecord)."""
    return {
        "kind": "task",
        "status": "ok",
        "site": site,
        "round": 1,
        "queue_s": queue_s,
        "submitted_at": 0.0,
        "received_at": 60.0,
        "submitted_rel_s": 0.0,
        "bytes_down": 0,
        "transport": "inline",
        "attempts": 1,
        "base_version": 0,
        "local_steps": 20,
        "load_s": 2.0 if warm else 40.0,
        "train_s": 30.0,
        "steps": 20,
        "transfer_s": 3.0,
        "cache_hit": warm,
        **extra,
    }


def test_calibration_fits_lognormal_per_site_with_a_minimum_sample_rule(tmp_path: Path) -> None:
    rng = random.Random(5)
    cold = [rng.lognormvariate(math.log(900.0), 1.2) for _ in range(12)]
    polaris = [record("pol", w, False) for w in cold] + [record("pol", 0.5, True) for _ in range(6)]
    few = [
        record("loc", 4.0, False),
        record("loc", 6.0, False),
        record("loc", 0.2, True),
        record("loc", 1.0, True, status="failed"),
    ]
    run = write_run(
        tmp_path / "run-1",
        polaris + few,
        [
            {
                "name": "pol",
                "site": "polaris",
                "user_options": {"queue": "debug", "walltime": "02:00:00"},
            },
            {"name": "loc", "site": "local"},
        ],
    )
    out = tmp_path / "queues.yaml"
    notes = calibrate.write_scenario([run], out, min_samples=5)
    sc = load_scenario(out)
    by_name = {p.name: p for p in sc.sites}
    wait = sc.queue_of(by_name["pol"]).wait
    # the wait is the cold tasks' queue_s less the dispatch latency every task pays (the
    # warm tasks' 0.5 s), which the scenario adds back as transfer.down_s
    logs = [math.log(w - 0.5) for w in cold]
    assert wait.model == "lognormal" and "12 cold task(s)" in wait.source
    assert wait.median_s == pytest.approx(math.exp(statistics.fmean(logs)), rel=1e-3)
    assert wait.sigma == pytest.approx(statistics.pstdev(logs), rel=1e-3)  # maximum likelihood
    assert (by_name["pol"].facility, by_name["pol"].queue, by_name["pol"].pilot.walltime) == (
        "polaris",
        "debug",
        "02:00:00",
    )
    assert by_name["pol"].speed.seconds_per_step == 1.5 and by_name["pol"].speed.load_cold_s == 40.0
    assert by_name["pol"].transfer.down_s == 0.5 and by_name["pol"].transfer.up_s == 3.0
    loc = sc.queue_of(by_name["loc"]).wait
    assert loc.model == "fixed" and loc.wait_s == pytest.approx(4.8)
    assert "only 2 cold task(s)" in loc.assumption
    assert any("pol: lognormal" in n for n in notes) and any("loc: 2 cold" in n for n in notes)


def test_calibration_takes_timed_out_tasks_as_censored_waits(tmp_path: Path) -> None:
    """A task that timed out waited at least its timeout: dropping it (as a complete fit of
    the rest would) makes the queue look faster than it is."""
    from scipy import stats

    done = [300.0, 600.0, 900.0, 1200.0, 2400.0]
    cut = [
        record("pol", 0.0, False, status="failed", error="timed out after 43200 s")
        for _ in range(3)
    ]
    warm = [record("pol", 20.0, True) for _ in range(4)]
    run = write_run(
        tmp_path / "run-c",
        [record("pol", w + 20.0, False) for w in done] + cut + warm,
        [{"name": "pol", "site": "polaris"}],
    )
    data, notes = calibrate.fit([run], min_samples=5)
    wait = data["facilities"]["polaris"]["queues"]["default"]["wait"]
    expected = stats.lognorm.fit(
        stats.CensoredData(uncensored=done, right=[43200.0 - 20.0] * 3), floc=0
    )
    complete = math.exp(statistics.fmean(math.log(w) for w in done))
    assert wait["median_s"] == pytest.approx(expected[2], rel=1e-3)
    assert wait["sigma"] == pytest.approx(expected[0], rel=1e-3)
    assert wait["median_s"] > 1.5 * complete  # the censored waits pull it up
    assert "3 timed out (censored)" in wait["source"] and "censored" in notes[0]


def test_calibration_refuses_directories_without_telemetry(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no metrics.jsonl"):
        calibrate.fit([tmp_path])
    run = write_run(tmp_path / "r", [record("a", 1.0, False, status="failed")], [])
    with pytest.raises(UserError, match="no successful task records"):
        calibrate.fit([run])


def test_pilot_defaults_are_the_engines_and_the_kit_renders_them_unchanged() -> None:
    """What the first cheap check rests on (README.md beside crossfl/simulate): the engine's
    idle time is a user option whose default is the engine's own."""
    from globus_compute_endpoint.engines import GlobusComputeEngine

    from crossfl.simulate.scenario import Pilot
    from crossfl.sites import Site

    engine = GlobusComputeEngine(address="127.0.0.1")
    try:
        kwargs = engine._job_status_kwargs
    finally:
        engine.executor = None  # never started: nothing to shut down
    pilot = Pilot.engine_defaults()
    assert (kwargs["max_idletime"], kwargs["strategy_period"], kwargs["strategy"]) == (
        pilot.max_idletime_s,
        pilot.strategy_period_s,
        "simple",
    )
    from crossfl.render.options import ENGINE_MAX_IDLETIME_S

    assert ENGINE_MAX_IDLETIME_S == kwargs["max_idletime"]
    fields = Site.model_fields
    assert (
        fields["init_blocks"].default,
        fields["min_blocks"].default,
        fields["max_blocks"].default,
    ) == (pilot.init_blocks, pilot.min_blocks, pilot.max_blocks)


# ------------------------------------------------------------------ the comparison's arithmetic


def test_time_and_node_hours_to_target_and_paired_ratios() -> None:
    import math

    import numpy as np

    from crossfl.server.records import EvalRecord, PilotRecord
    from crossfl.simulate.compare import node_hours_until, paired_ratio, time_to_target

    def ev(t: float, loss: float, kind: str = "round") -> EvalRecord:
        return EvalRecord(
            kind=kind,
            round=1,
            val_loss=loss,
            elapsed_s=t,
            strategy="s",
            version=1,
            updates=1,
            bytes_down=0,
            transport="inline",
            driver="sync",
        )

    evals = [ev(0, 0.5, "baseline"), ev(100, 2.0), ev(250, 1.0), ev(400, 0.9)]
    assert time_to_target(evals, 1.0) == 250  # the baseline does not count
    assert time_to_target(evals, 0.1) == math.inf

    def pilot(start: float | None, end: float | None, nodes: int = 2) -> PilotRecord:
        return PilotRecord(
            site="a",
            profile="a",
            facility="f",
            queue="q",
            mode="pilot",
            block=0,
            nodes=nodes,
            walltime_s=7200,
            submitted_at=0,
            started_at=start,
            ended_at=end,
            held_s=0,
            node_hours=0,
            tasks=1,
        )

    pilots = [pilot(0, 1800), pilot(1800, None), pilot(None, 3600), pilot(5000, 6000)]
    assert node_hours_until(pilots, 3600) == 2 * 1800 / 3600 + 2 * 1800 / 3600
    assert node_hours_until(pilots, math.inf) == math.inf

    one = paired_ratio([2.0], [1.0])
    assert one.gmean == 2.0 and math.isnan(one.low) and math.isnan(one.high)
    const = paired_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert (const.gmean, const.low, const.high) == pytest.approx((2.0, 2.0, 2.0))  # no spread
    a, b = [1.0, 3.0, 2.0, 5.0, 4.0, 2.5], [2.0, 2.0, 2.5, 2.0, 3.0, 2.0]
    r = paired_ratio(a, b)
    ratios = np.array(a) / np.array(b)
    assert r.gmean == pytest.approx(float(np.exp(np.mean(np.log(ratios)))))
    assert r.of_means == pytest.approx(sum(a) / sum(b))
    assert r.low < r.gmean < r.high and r.of_means_low < r.of_means < r.of_means_high
    assert math.isnan(paired_ratio([1.0, math.inf], [1.0, 1.0]).gmean)


def test_one_seed_gives_no_verdict_and_the_claim_needs_every_seed_of_ours() -> None:
    from crossfl.simulate.compare import MIN_SEEDS, Comparison, ReplayOutcome, paired_ratio

    def run(label: str, seed: int, t: float | None) -> ReplayOutcome:
        return ReplayOutcome(
            label, seed, {}, t is not None, t, t or 3600.0, "target", 1.0, 1.0, [], 1.0
        )

    def comparison(n: int, ours: list[float | None]) -> Comparison:
        outcomes = {
            "ours": [run("ours", i, t) for i, t in enumerate(ours)],
            "fedqueue": [run("fedqueue", i, 1000.0 + 10 * i) for i in range(n)],
        }
        c = Comparison("compare", 1.0, 1.0, n, 3600.0, 60, outcomes, {}, {}, {})
        nh = paired_ratio([0.5] * n, [1.0] * n)
        c.ratios[("ours", "fedqueue")] = {
            "time": paired_ratio(c.times("ours"), c.times("fedqueue")),
            "node_hours": nh,
        }
        return c

    assert comparison(1, [100.0]).verdict().startswith("no verdict: 1 seed")
    fast = [100.0 + 7 * i for i in range(MIN_SEEDS)]
    assert "claimed" in comparison(MIN_SEEDS, fast).verdict()
    missed = comparison(MIN_SEEDS, [*fast[:-1], None])
    assert "no claim (ours missed the target on 1 seed(s))" in missed.verdict()
    for c in (comparison(MIN_SEEDS, fast), missed):  # the verdict reads in 80 columns
        assert max(len(line) for line in c.verdict().splitlines()) <= 80


def test_a_replays_progress_line_fits_80_columns() -> None:
    from crossfl.simulate.jobs import _fmt_outcome, progress_line
    from crossfl.simulate.outcome import ReplayOutcome

    longest = 0
    for reached, t, end in ((True, 345599.0, "target"), (False, None, "horizon")):
        o = ReplayOutcome("fedqueue+warm", 19, {}, reached, t, 345600.0, end, 1.0, 1.0, [], 1.0)
        longest = max(longest, len(progress_line(140, 140, o, _fmt_outcome(o), 45296.0)))
    assert longest <= 80


# ------------------------------------------------------------------ the dispatch policy


def policy_for(**dispatch: Any) -> Any:
    """A queue-aware policy over a FedAvg experiment of sites a and b, on a virtual clock,
    with no scheduler to ask (as a live site without a control)."""
    from crossfl.server.dispatch import make_policy
    from crossfl.server.experiment import Experiment
    from crossfl.server.strategies import get_strategy

    exp = Experiment.model_validate(
        {
            "name": "p",
            "model": {"path": "m"},
            "data": {"train": "t.jsonl", "validation": "v.jsonl"},
            "sites": [{"name": "a", "site": "local"}, {"name": "b", "site": "local"}],
            "training": {"local_steps": 20},
            "dispatch": {"name": "queue-aware", **dispatch},
        }
    )
    clock = VirtualClock()
    policy = make_policy(exp, clock, strategy=get_strategy("fedavg"))
    for site in ("a", "b"):
        policy.state(site).walltime_s = 3600.0
    return policy, clock


def task_done(
    site: str,
    *,
    submitted: float,
    received: float,
    wall: float,
    queue: float,
    cold: bool,
    status: str = "ok",
    attempts: int = 1,
    error: str | None = None,
) -> Any:
    from crossfl.server.records import TaskRecord

    ok = status == "ok"
    return TaskRecord(
        round=1,
        site=site,
        status=status,
        submitted_at=submitted,
        received_at=received,
        submitted_rel_s=submitted,
        bytes_down=0,
        transport="inline",
        attempts=attempts,
        base_version=0,
        local_steps=10,
        error=error,
        steps=10 if ok else None,
        train_s=50.0 if ok else None,
        load_s=0.0 if ok else None,
        queue_s=queue if ok else None,
        task_wall_s=wall if ok else None,
        transfer_s=0.0 if ok else None,
        cache_hit=not cold if ok else None,
    )


def steps_at(policy: Any, clock: VirtualClock, t: float) -> int:
    from crossfl.server.strategies import ClientPlan

    clock.sleep(t - clock.now())
    return policy.plan("a", 1, ClientPlan(20, 1e-3)).local_steps


def test_a_released_pilot_does_not_shorten_the_next_task() -> None:
    """The pilot that ran a's task (started at 100 s, walltime 1 h) was released idle long
    before 3500 s: the next task goes to a new pilot, whole. (Before: it was fitted into the
    old pilot's last 80 s: 16 steps, down to 1.)"""
    policy, clock = policy_for(walltime_margin_s=120)
    policy.observe(task_done("a", submitted=0, received=200, wall=200, queue=100, cold=True))
    assert steps_at(policy, clock, 3500.0) == 20


def test_a_lost_pilot_does_not_shorten_the_next_task() -> None:
    policy, clock = policy_for(walltime_margin_s=120)
    policy.state("a").keep = True  # kept warm: idle does not end it
    policy.observe(task_done("a", submitted=0, received=200, wall=200, queue=100, cold=True))
    assert steps_at(policy, clock, 3500.0) == 16  # 80 s left at 5 s a step
    lost = "ManagerLost: Task failure due to loss of manager (the pilot job ended at preempted)"
    clock.sleep(10.0)
    policy.observe(
        task_done(
            "a",
            submitted=3500,
            received=3510,
            wall=10,
            queue=0,
            cold=False,
            status="failed",
            error=lost,
        )
    )
    assert steps_at(policy, clock, 3520.0) == 20


def test_a_retried_tasks_pilot_starts_at_its_last_submission() -> None:
    """The first attempt failed; the retry was submitted at 500 s and waited 100 s for a new
    pilot: that pilot started at 600 s (not at first submission + queue, 100 s)."""
    policy, clock = policy_for(walltime_margin_s=120)
    policy.state("a").keep = True
    policy.observe(
        task_done("a", submitted=0, received=1000, wall=500, queue=100, cold=True, attempts=2)
    )
    assert policy.current_pilot("a") == (600.0, 4200.0)
    assert steps_at(policy, clock, 4000.0) == 16  # 80 s left in the pilot started at 600 s


def test_warm_or_release_weighs_the_others_waiting_against_the_idle_hold() -> None:
    from crossfl.server.dispatch import WaitEstimator

    policy, _ = policy_for(prior_wait_s=900)
    # one other site of one node waits ~900 s for a new pilot of a: keep a for a 600 s gap,
    # not for a 1200 s one
    assert policy.keep_warm("a", 600.0) and not policy.keep_warm("a", 1200.0)
    est = WaitEstimator(900.0)
    before = est.expected_s()
    for w in (3000.0, 5000.0, 4000.0, 6000.0):
        est.add(w)
    assert est.expected_s() > 3 * before  # learned from what the pilots waited
    assert est.expected_s(waiting_for_s=50000.0) == 50000.0  # at least what one waits now


def test_weights_count_staleness_and_participation() -> None:
    import torch

    from crossfl.server.strategies import Update

    policy, _ = policy_for()
    for _ in range(3):
        policy.observe(task_done("a", submitted=0, received=10, wall=10, queue=0, cold=False))
    policy.observe(task_done("b", submitted=0, received=10, wall=10, queue=0, cold=False))
    fresh_b = Update("b", torch.zeros(1), 1, base_version=5, local_steps=1)
    stale_a = Update("a", torch.zeros(1), 1, base_version=3, local_steps=1)
    assert policy.weight(fresh_b, 5) == 2.0  # a quarter of the updates, half expected
    assert policy.weight(stale_a, 5) == pytest.approx((0.5 / 0.75) / (1 + 0.5 * 2))
    off, _ = policy_for(weighting=False)
    assert off.weight(stale_a, 5) == 1.0


# ------------------------------------------------------------------ keys, data, copies


def test_cache_keys_change_with_the_code_and_library_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib import metadata

    from crossfl.simulate import cache

    payload = task(10, adapter=b"g")
    before = payload_digest(toy_train, payload)
    real = metadata.version
    monkeypatch.setattr(
        cache.metadata, "version", lambda lib: "9.9" if lib == "torch" else real(lib)
    )
    cache.code_version.cache_clear()
    try:
        assert payload_digest(toy_train, payload) != before  # another torch: trained anew
    finally:
        monkeypatch.undo()
        cache.code_version.cache_clear()
    assert payload_digest(toy_train, payload) == before
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    cache.code_version.cache_clear()
    try:
        assert payload_digest(toy_train, payload) != before
    finally:
        monkeypatch.undo()
        cache.code_version.cache_clear()


def test_every_variant_of_an_experiment_shares_one_data_directory(tmp_path: Path) -> None:
    """The partition depends on the data and its settings, not on the experiment's name or
    strategy: variants then name the same files, and identical tasks are reused."""
    from types import SimpleNamespace

    from crossfl.server.experiment import Experiment, with_changes
    from crossfl.simulate.replay import data_dir

    train = tmp_path / "train.jsonl"
    train.write_text("{}\n")
    base = Experiment.model_validate(
        {
            "name": "base",
            "model": {"path": "m"},
            "data": {"train": str(train), "validation": "v.jsonl"},
            "sites": [{"name": "a", "site": "local"}, {"name": "b", "site": "local"}],
        }
    )
    sites = {"a": SimpleNamespace(data_path=None), "b": SimpleNamespace(data_path=None)}

    def plan(e: Experiment) -> Any:
        return SimpleNamespace(experiment=e, train_path=train, sites=sites)

    variant = with_changes(base, name="base-fedqueue-warm", strategy={"name": "fedqueue"})
    assert data_dir(plan(variant)) == data_dir(plan(base))
    other = with_changes(base, data={**base.data.model_dump(), "partition": {"seed": 1}})
    assert data_dir(plan(other)) != data_dir(plan(base))


def test_experiment_copies_are_validated() -> None:
    """A variant's experiment is checked like a file (model_copy(update=...) accepted
    rounds=0 and any strategy argument)."""
    from crossfl.server.experiment import Experiment, with_changes
    from crossfl.simulate.compare import Variant, variant_experiment

    base = Experiment.model_validate(
        {
            "name": "base",
            "model": {"path": "m"},
            "data": {"train": "t.jsonl", "validation": "v.jsonl"},
            "sites": [{"name": "a", "site": "local"}],
        }
    )
    with pytest.raises(UserError, match="rounds"):
        with_changes(base, rounds=0)
    v = variant_experiment(base, Path("x.yaml"), Variant("q", "fedqueue"), {"t_sync": 60}, 1.0)
    assert v.rounds == 4 * base.rounds and v.stop_at_loss == 1.0
    with pytest.raises(UserError, match="dispatch"):
        variant_experiment(
            base, Path("x.yaml"), Variant("q", "fedqueue", dispatch={"name": "x"}), {}, 1.0
        )


def test_the_policy_takes_the_schedulers_estimate_and_never_the_scenarios() -> None:
    """A live site's scheduler estimate wins; a replay's endpoint gives none (it never hands
    out the scenario's wait model), so the policy starts from its prior and learns from the
    waits its pilots had."""
    from types import SimpleNamespace

    policy, clock = policy_for(prior_wait_s=900)
    policy.controls["a"] = SimpleNamespace(start_estimate_s=lambda: 1234.0, pilots=lambda: None)
    assert policy.expected_wait_s("a") == 1234.0
    slow = scenario({"model": "fixed", "wait_s": 5000.0, "assumption": "test"})
    ex = site(slow, clock)
    assert ex.start_estimate_s() is None and not hasattr(ex, "expected_wait_s")
    policy.controls["b"] = ex
    assert policy.expected_wait_s("b") == pytest.approx(900.0)  # the prior, not 5000
    run_one(ex, clock, task(10))  # its pilot waited 5000 s
    policy.learn_waits("b")
    assert policy.expected_wait_s("b") > 1500.0


def test_replay_plots_say_virtual_time_and_keep_a_lane_for_a_site_that_only_failed(
    tmp_path: Path,
) -> None:
    from crossfl.server.records import PilotRecord
    from crossfl.server.report import plot_site_timeline, time_axis, timeline_sites

    ok = task_done("a", submitted=0, received=200, wall=200, queue=100, cold=True)
    lost = task_done(
        "b",
        submitted=0,
        received=43200,
        wall=0,
        queue=0,
        cold=True,
        status="failed",
        error="timed out after 43200 s",
    )
    pilot = PilotRecord(
        site="a",
        profile="a",
        facility="f",
        queue="q",
        mode="pilot",
        block=0,
        nodes=1,
        walltime_s=3600,
        submitted_at=0,
        started_at=100,
        ended_at=400,
        held_s=300,
        node_hours=300 / 3600,
        tasks=1,
    )
    records = [ok, lost, pilot]
    assert timeline_sites(records) == ["a", "b"]
    assert time_axis(records, 160000.0) == ("virtual time (replay) since start (h)", 3600.0)
    assert time_axis([ok], 100.0) == ("wall-clock time since start (s)", 1.0)
    assert plot_site_timeline(records, tmp_path / "t.png").stat().st_size > 0


def test_the_reproduction_says_whether_fedqueue_came_sooner() -> None:
    from crossfl.simulate.compare import MIN_SEEDS, Comparison, ReplayOutcome, paired_ratio

    def run(label: str, seed: int, t: float) -> ReplayOutcome:
        return ReplayOutcome(label, seed, {}, True, t, t, "target", 1.0, 1.0, [], 1.0)

    n = MIN_SEEDS
    outcomes = {
        "fedqueue": [run("fedqueue", i, 100.0 + i) for i in range(n)],
        "fedavg": [run("fedavg", i, 200.0 + 5 * i) for i in range(n)],
        "fedasync": [run("fedasync", i, 90.0 + 3 * (i % 4)) for i in range(n)],
    }
    c = Comparison("reproduce", 1.0, 1.0, n, 3600.0, 1, outcomes, {}, {}, {})
    for other in ("fedavg", "fedasync"):
        c.ratios[(other, "fedqueue")] = {
            "time": paired_ratio(c.times(other), c.times("fedqueue")),
            "node_hours": paired_ratio([1.0] * n, [1.0] * n),
        }
    said = c.verdict().splitlines()
    assert (
        said[0].startswith("fedavg vs fedqueue: time x2.1")
        and "reproduced (FedQueue sooner)" in said[0]
    )
    assert "NOT reproduced (FedQueue later)" in said[1]
