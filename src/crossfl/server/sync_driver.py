"""The synchronous round driver.

Every round, each site that is not parked (nor held by the strategy: its update waits for the
next aggregation) trains from the same global adapter; the round ends when all have answered,
or at the deadline once `quorum.min_clients` updates are in (the rest are late: recorded, and
merged into the next round when the strategy says it merges late updates). Under the
strategy's ``timer_or_all`` rule (FedQueue, as APPFL's scheduler) the round waits for an
update of every site instead, until its timer. When and how much each site works is the
dispatch policy's (``crossfl.server.dispatch``). The strategy aggregates the screened updates,
one site evaluates, and a checkpoint is written.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED
from typing import Any

from crossfl.server.driver_base import Arrival, DriverBase, Pending, RunFailed, RunOutcome
from crossfl.server.records import AggregationRecord, EvalRecord, SkippedRecord
from crossfl.server.strategies.base import Update


class RoundDriver(DriverBase):
    """Synchronous rounds with a quorum deadline, retries, parking and late updates."""

    name = "sync"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.late: list[Pending] = []  # tasks of earlier rounds still running

    def merge_late(self) -> bool:
        mode = self.exp.quorum.late_updates
        return self.strategy.merges_late_updates if mode == "auto" else mode == "next_round"

    def skip(self, rnd: int, site: str, reason: str) -> None:
        self.metrics.write(
            SkippedRecord(round=rnd, site=site, reason=reason, at_rel_s=self.state.elapsed())
        )

    def choose_sites(self, rnd: int) -> list[str]:
        busy = {p.site: p.rnd for p in self.late}
        active = []
        for name in self.handles:
            if name in busy:
                self.skip(rnd, name, f"still running its round {busy[name]} task")
            elif self.dispatch.holds(name):
                self.skip(rnd, name, "its held-back update waits for this round's aggregation")
            elif self.parking.is_parked(name, rnd):
                self.skip(rnd, name, f"parked until round {self.parking.parked_until[name]}")
            else:
                active.append(name)
        if not active and not self.late:  # every site parked: nothing else can make progress
            self.console.print(
                f"  [yellow]round {rnd}: every site is parked; re-admitting them all[/]"
            )
            self.parking.parked_until.clear()
            active = list(self.handles)
        return active

    # -- one round --------------------------------------------------------------------------
    def train_round(self, rnd: int, progress: Any, bar: Any) -> list[Update]:
        held = {name for name in self.handles if self.dispatch.holds(name)}
        mine = [self.submit_train(name, rnd) for name in self.choose_sites(rnd)]
        progress.update(bar, total=len(mine))
        pending: list[Pending] = [*mine, *self.late]
        need = min(self.exp.quorum.min_clients or 1, len(mine))
        every = self.dispatch.waits_for_every_site()
        opened, first_arrival = self.clock.now(), None
        arrived: set[str] = set(held)  # sites whose update is in (a held one counts)
        arrivals: list[Arrival] = []

        def accepted() -> int:
            return sum(
                1 for a in arrivals if a.update is not None and (every or a.record.round == rnd)
            )

        def finish(p: Pending, a: Arrival) -> None:
            nonlocal first_arrival
            if p.rnd != rnd:
                a.record.late, a.record.arrived_in_round = True, rnd
                if a.update is not None and not self.merge_late():
                    a.record.status, a.record.reason = (
                        "late",
                        f"arrived after round {p.rnd} was aggregated",
                    )
                    a.update = None
            if a.update is None:
                self.settle(a, rnd)
            else:
                arrivals.append(a)
                arrived.add(p.site)
                first_arrival = self.clock.now() if first_arrival is None else first_arrival
                progress.update(
                    bar,
                    description=f"round {rnd}/{self.exp.rounds} {p.site} "
                    f"loss {a.record.train_loss:.3f}",
                )
            if p.rnd == rnd:
                progress.advance(bar)

        def waiting() -> bool:
            if every:  # every site's update, until the timer
                return bool(pending) and not arrived >= set(self.handles)
            # this round's tasks, or (every site busy) the first late one
            return any(p.rnd == rnd for p in pending) or bool(not mine and pending and not arrivals)

        while waiting():
            now = self.clock.now()
            deadline = self.dispatch.round_deadline(opened, first_arrival)
            if (
                deadline is not None
                and now >= deadline
                and accepted() >= need
                and (mine or arrivals)
            ):
                break
            for p in [p for p in pending if now >= p.expires_at and not p.task.future.done()]:
                pending.remove(p)
                finish(p, self.arrival(p, now, timed_out=True))
            wakes = [p.expires_at for p in pending]
            if deadline is not None and now < deadline:
                wakes.append(deadline)
            futures = [p.task.future for p in pending]
            if not futures:
                break
            done, _ = self.clock.wait(
                futures, timeout=max(0.05, min(wakes) - now), return_when=FIRST_COMPLETED
            )
            for p in [p for p in pending if p.task.future in done]:
                pending.remove(p)
                finish(p, self.arrival(p, self.clock.now()))
        self.late = pending
        for p in pending:
            if p.rnd == rnd:
                self.console.print(
                    f"  [yellow]round {rnd}: site {p.site} missed the round's "
                    "deadline; its update will be late[/]"
                )
        self.screen_distances(arrivals)
        for a in arrivals:
            self.settle(a, rnd)
        updates = [a.update for a in arrivals if a.update is not None]
        current = sum(1 for u in updates if u.base_version == self.state.version)
        if not updates:
            raise RunFailed(f"round {rnd}: no site returned an update")
        if current < need and not every:
            raise RunFailed(
                f"round {rnd}: {current} usable update(s) of this round, quorum.min_clients is {need}"
            )
        return updates

    def aggregate(self, updates: list[Update], rnd: int) -> None:
        s = self.state
        started = s.elapsed()
        if s.global_flat is None:
            # Every site started from the same seeded fresh adapter: that is version 0.
            s.global_flat = self.initial_global()
        new = self.strategy.aggregate(
            s.global_flat, sorted(updates, key=lambda u: (u.site, u.base_version)), s.version
        )
        s.round = rnd
        self.dispatch.aggregated()  # the round is closed, its global taken or refused
        if new is not None and not self.accept_global(new, rnd, sorted(u.site for u in updates)):
            return  # the last good global stays; the round's updates count for nothing
        if new is not None:
            s.global_flat = new
            s.version += 1
        s.updates += len(updates)
        self.metrics.write(
            AggregationRecord(
                round=rnd,
                version=s.version,
                driver=self.name,
                sites=sorted(u.site for u in updates),
                started_s=started,
                elapsed_s=s.elapsed(),
                staleness={u.site: s.version - 1 - u.base_version for u in updates},
            )
        )

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        exp = self.exp
        last: EvalRecord | None = None
        with self.progress() as progress:
            base = self.baseline()
            rounds_task = progress.add_task("rounds", total=exp.rounds, completed=self.state.round)
            try:
                for rnd in range(self.state.round + 1, exp.rounds + 1):
                    bar = progress.add_task(f"round {rnd}/{exp.rounds}", total=len(self.handles))
                    t0 = self.clock.now()
                    updates = self.train_round(rnd, progress, bar)
                    self.aggregate(updates, rnd)
                    if rnd % exp.evaluate_every == 0 or rnd == exp.rounds:
                        last = self.evaluate("round", rnd)
                    self.checkpoint()
                    progress.remove_task(bar)
                    progress.advance(rounds_task)
                    loss = f"{last.headline()}, " if last and last.round == rnd else ""
                    self.console.print(
                        f"round {rnd}/{exp.rounds}: {len(updates)}/{len(self.handles)} updates, "
                        f"{loss}{self.clock.now() - t0:.0f} s, {self.bytes_moved / 1e6:.2f} MB moved"
                    )
                    self.after_checkpoint()
                    if self.reached_target(last if last and last.round == rnd else None):
                        self.console.print(f"validation loss at or under {exp.stop_at_loss}: done")
                        break
            finally:
                for p in self.late:
                    p.task.cancel()
        if last is None:  # resumed after the last round's aggregation, before its evaluation
            last = self.evaluate("round", self.state.round)
        self.save_final()
        return RunOutcome(base, last)
