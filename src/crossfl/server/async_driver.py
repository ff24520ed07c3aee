"""The asynchronous driver: every site stays busy.

When a site's update arrives it is screened and handed to the strategy alone
(``aggregate(global, [update], version)``; None means buffered, e.g. FedBuff), and the site at
once gets its next task from the current global adapter, sized by the dispatch policy (the
strategy's ``configure``, fitted to the site's pilot), unless the strategy holds it until its
buffered update is aggregated (FedCompass' arrival groups, as APPFL holds a client). An
aggregation the strategy owes at a time (FedCompass' group deadline: APPFL's timer) runs then.
Staleness is the number of versions the global adapter moved since the task was submitted
(``Update.base_version``). The run ends after ``rounds`` aggregations (global versions), or
after ``max_updates`` accepted updates when that is set. Evaluation follows every
``evaluate_every``-th aggregation; a checkpoint follows every aggregation.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED

import torch

from crossfl.server.driver_base import Arrival, DriverBase, Pending, RunFailed, RunOutcome
from crossfl.server.records import AggregationRecord, EvalRecord


class AsyncDriver(DriverBase):
    name = "async"
    target_met = False  # stop_at_loss reached

    def done(self) -> bool:
        if self.target_met:
            return True
        if self.exp.max_updates is not None:
            return self.state.updates >= self.exp.max_updates
        return self.state.round >= self.exp.rounds

    def target(self) -> tuple[int, str]:
        if self.exp.max_updates is not None:
            return self.exp.max_updates, "updates"
        return self.exp.rounds, "aggregations"

    def progress_value(self) -> int:
        return self.state.updates if self.exp.max_updates is not None else self.state.round

    def launch(self, site: str, inflight: dict[str, Pending]) -> None:
        self.submitted += 1
        inflight[site] = self.submit_train(site, self.submitted)

    def aggregated(
        self, new: torch.Tensor, sites: list[str], staleness: dict[str, int], started_s: float
    ) -> EvalRecord | None:
        """A new global version (its aggregation began at run time ``started_s``): record it,
        evaluate when due, checkpoint. A new global that is refused changes nothing: the last
        good one stays."""
        s = self.state
        if not self.accept_global(new, s.round + 1, sites):
            self.fail_streak += 1
            return None
        s.global_flat = new
        s.version += 1
        s.round += 1
        self.dispatch.aggregated()
        self.metrics.write(
            AggregationRecord(
                round=s.round,
                version=s.version,
                driver=self.name,
                sites=sites,
                started_s=started_s,
                elapsed_s=s.elapsed(),
                updates=s.updates,
                staleness=staleness,
            )
        )
        record = None
        if s.round % self.exp.evaluate_every == 0 or self.done():
            record = self.evaluate("round", s.round)
            self.target_met = self.reached_target(record)
        self.checkpoint()
        return record

    def flush_due(self) -> EvalRecord | None:
        """The strategy's timer ran out: the aggregation it owes, if any."""
        s = self.state
        if s.global_flat is None:
            return None
        started = s.elapsed()
        new = self.strategy.flush_due(s.global_flat, s.version)
        return None if new is None else self.aggregated(new, [], {}, started)

    def handle(self, a: Arrival, p: Pending) -> EvalRecord | None:
        """Screen, aggregate, checkpoint (and maybe evaluate) one arrival; the eval record or None."""
        s = self.state
        if a.update is not None:
            self.screen_distances([a])
        a.record.staleness = s.version - p.base_version
        a.record.arrived_version = s.version
        self.settle(a, s.round + 1)
        if a.update is None:
            self.fail_streak += 1
            return None
        self.fail_streak = 0
        started = s.elapsed()
        if s.global_flat is None:
            s.global_flat = self.initial_global()
        new = self.strategy.aggregate(s.global_flat, [a.update], s.version)
        s.updates += 1
        if new is None:
            return None
        return self.aggregated(
            new, [a.update.site], {a.update.site: s.version - p.base_version}, started
        )

    def run(self) -> RunOutcome:
        last: EvalRecord | None = None
        self.submitted = self.state.updates
        inflight: dict[str, Pending] = {}
        total, unit = self.target()
        with self.progress() as progress:
            base = self.baseline()
            bar = progress.add_task(unit, total=total, completed=self.progress_value())
            try:
                while not self.done():
                    for site in self.handles:
                        if (
                            site not in inflight
                            and not self.dispatch.holds(site)
                            and not self.parking.is_parked(site, self.state.round + 1)
                        ):
                            self.launch(site, inflight)
                    due = self.dispatch.due_in()
                    if due is not None and due <= 0:
                        last = self.flush_due() or last
                        continue
                    if not inflight and due is not None:  # only held sites: their timer
                        self.clock.sleep(due)
                        continue
                    if not inflight:  # every site parked: re-admit them rather than stall
                        self.console.print(
                            "  [yellow]every site is parked; re-admitting them all[/]"
                        )
                        self.parking.parked_until.clear()
                        continue
                    now = self.clock.now()
                    for site, p in list(inflight.items()):
                        if now >= p.expires_at and not p.task.future.done():
                            del inflight[site]
                            self.handle(self.arrival(p, now, timed_out=True), p)
                    if not inflight:
                        continue
                    wake = min(p.expires_at for p in inflight.values())
                    if due is not None:
                        wake = min(wake, now + due)
                    done, _ = self.clock.wait(
                        [p.task.future for p in inflight.values()],
                        timeout=max(0.05, wake - now),
                        return_when=FIRST_COMPLETED,
                    )
                    for site, p in sorted(inflight.items()):
                        if p.task.future not in done or self.done():
                            continue
                        del inflight[site]
                        a = self.arrival(p, self.clock.now())
                        loss = a.record.train_loss
                        record = self.handle(a, p)
                        last = record or last
                        progress.update(
                            bar,
                            completed=self.progress_value(),
                            description=f"{unit} (v{self.state.version}, {site} "
                            f"{'loss %.3f' % loss if loss is not None else a.record.status})",
                        )
                        if record is not None:
                            self.console.print(
                                f"version {self.state.version}: {record.headline()} "
                                f"after {self.state.updates} updates, {self.state.elapsed():.1f} s, "
                                f"{self.bytes_moved / 1e6:.2f} MB moved"
                            )
                        if self.stop_after is not None and self.state.round >= self.stop_after:
                            self.after_checkpoint()
                    self.check_progress()
            finally:
                for p in inflight.values():
                    p.task.cancel()
        if self.state.global_flat is None:
            raise RunFailed("no update was aggregated")
        if last is None or last.version != self.state.version:
            last = self.evaluate("round", self.state.round)
        self.save_final()
        return RunOutcome(base, last)

    fail_streak = 0

    def check_progress(self) -> None:
        """Fail (rather than spin) when no update was usable for a long streak of tasks."""
        if self.fail_streak >= 2 * self.exp.faults.park_after * len(self.handles):
            raise RunFailed(
                f"no usable update in the last {self.fail_streak} tasks; "
                f"see metrics.jsonl for each site's error"
            )
