"""Replay an experiment against facility queue behaviour in virtual time.

Real strategies and real tiny-model training; simulated queue waits, pilot jobs,
walltimes, idle release, device speeds and transfers. The modules, one job each:

- ``clock``: ``RealClock`` / ``VirtualClock``, the time the round drivers read
- ``queues``: per-queue wait models (APPFL's lognormal, a cited fit, fixed)
- ``scenario``: the queue scenario file (deploy/queues/*.yaml) and its checks
- ``pilot``: one site's endpoint in virtual time (blocks, idle release, node-hours)
- ``cache``: reuse a training result whose inputs are identical
- ``executor``: ``SimulatedSiteExecutor`` behind the kit's Executor seam
- ``calibrate``: a scenario fitted to the kit's own metrics.jsonl telemetry

How the drivers and ``crossfl simulate`` use them: README.md beside this file.
"""

from crossfl.clock import Clock, RealClock, SimulationStalled, VirtualClock, bind_strategy_clock
from crossfl.simulate.cache import ResultCache
from crossfl.simulate.executor import InstantExecutor, SimulatedSiteExecutor, simulated_sites
from crossfl.simulate.scenario import Scenario, SiteProfile, load_scenario

__all__ = [
    "Clock",
    "InstantExecutor",
    "RealClock",
    "ResultCache",
    "Scenario",
    "SimulatedSiteExecutor",
    "SimulationStalled",
    "SiteProfile",
    "VirtualClock",
    "bind_strategy_clock",
    "load_scenario",
    "simulated_sites",
]
