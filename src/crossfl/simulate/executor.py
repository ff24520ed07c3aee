"""Simulated sites behind the kit's one seam, ``concurrent.futures.Executor``.

``SimulatedSiteExecutor.submit(fn, payload)`` returns a future that completes only
when virtual time reaches the task's end (its pilot's queue wait, model load,
``steps x seconds_per_step`` and transfers). ``fn`` really runs, in this process,
when the task starts on its virtual worker; its result comes back unchanged except
for the times (``started_at``, ``finished_at``, ``timings``, ``cache_hit``: see
``SiteSimulator.virtual_result``), so the server's telemetry reads as if the site were
a real facility. A failure comes back as the SDK raises it (``TaskExecutionFailed``).

``InstantExecutor`` runs the real function and completes at once, costing no virtual
time: for evaluation, which is the experimenter's measurement, not the federation's
work.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from crossfl.clock import VirtualClock
from crossfl.simulate.cache import ResultCache
from crossfl.simulate.pilot import SiteSimulator, remote_failure
from crossfl.simulate.queues import walltime_seconds
from crossfl.simulate.scenario import Scenario, SiteProfile

DEFAULT_WALLTIME_S = 3600.0  # the site catalog default walltime (sites/schema.py: 01:00:00)


def _payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs or len(args) != 1:
        raise TypeError("a site task takes exactly one payload argument: submit(fn, payload)")
    return args[0]


class SimulatedSiteExecutor(Executor):
    """One site of a replay: an endpoint whose pilots live in virtual time."""

    def __init__(
        self,
        site: str,
        profile: SiteProfile,
        scenario: Scenario,
        clock: VirtualClock,
        *,
        seed: int,
        cache: ResultCache | None = None,
        nodes: int | None = None,
        walltime: str | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.site, self.profile, self.clock = site, profile, clock
        self.cache = cache or ResultCache()
        self.nodes, walltime_s = job_shape(profile, nodes, walltime)
        self.queue = scenario.queue_of(profile)
        self.sim = SiteSimulator(
            site,
            profile,
            self.queue,
            clock,
            self.cache.run,
            seed=f"{scenario.seed}:{seed}",
            nodes=self.nodes,
            walltime_s=walltime_s,
            on_record=on_record,
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.sim.submit(fn, _payload(args, kwargs))

    # -- the levers a dispatch policy has (crossfl.server.dispatch.SiteControl) ------------
    @property
    def walltime_s(self) -> float:
        return self.sim.walltime_s

    def set_idle(
        self, *, max_idletime_s: float | None = None, min_blocks: int | None = None
    ) -> None:
        """The engine's ``job_status_kwargs.max_idletime`` and the provider's ``min_blocks``,
        from now on."""
        self.sim.set_idle(max_idletime_s=max_idletime_s, min_blocks=min_blocks)

    def set_drain(self, drain_s: float) -> None:
        self.sim.set_drain(drain_s)

    def set_walltime(self, walltime_s: float) -> None:
        self.sim.set_walltime(walltime_s)

    def request_pilot(self) -> bool:
        return self.sim.request_block()

    def pilots(self) -> list[tuple[float, float | None, float | None]]:
        return self.sim.pilots()

    def start_estimate_s(self) -> float | None:
        """A replay has no scheduler to ask: the policy learns waits from the pilots'
        (it never reads the scenario's wait model)."""
        return None

    def walltime_choices(self) -> list[float]:
        """The walltimes of the queue's bins (a facility's published job-size rules, not
        their waits), and the walltime asked for."""
        edges = [walltime_seconds(b.max_walltime) for b in self.queue.shape_bins]
        return sorted({e for e in edges if e is not None} | {self.sim.walltime_s})

    def node_hours(self) -> float:
        return self.sim.node_hours()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.sim.shutdown()


class InstantExecutor(Executor):
    """Runs the real function at once; the future is done on return."""

    def __init__(self, cache: ResultCache | None = None) -> None:
        self.cache = cache or ResultCache()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        outcome = self.cache.run(fn, _payload(args, kwargs))
        if outcome.error is not None:
            future.set_exception(remote_failure(outcome.error))
        else:
            future.set_result(outcome.result)
        return future


def job_shape(profile: SiteProfile, nodes: int | None, walltime: str | None) -> tuple[int, float]:
    """Nodes and walltime of a pilot: what the experiment asks for, else the scenario's,
    else one node for an hour."""
    n = nodes or profile.pilot.nodes or 1
    wall = (
        walltime_seconds(walltime) or walltime_seconds(profile.pilot.walltime) or DEFAULT_WALLTIME_S
    )
    return n, wall


def simulated_sites(
    scenario: Scenario,
    site_names: list[str],
    clock: VirtualClock,
    *,
    seed: int,
    cache: ResultCache | None = None,
    shapes: dict[str, tuple[int | None, str | None]] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, SimulatedSiteExecutor]:
    """One executor per experiment site, profiles assigned by ``Scenario.assign``;
    ``shapes``: (nodes, walltime) the experiment asks of each site, where it does."""
    cache = cache or ResultCache()
    shapes = shapes or {}
    profiles = scenario.assign(site_names)
    return {
        name: SimulatedSiteExecutor(
            name,
            profiles[name],
            scenario,
            clock,
            seed=seed,
            cache=cache,
            nodes=shapes.get(name, (None, None))[0],
            walltime=shapes.get(name, (None, None))[1],
            on_record=on_record,
        )
        for name in site_names
    }
