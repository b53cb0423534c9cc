"""The elastic controller: every ``interval_s`` it reads the live metrics, asks the policy what
to do and carries it out with the Scaler. Runs as a thread of the orchestrator's process.

Metrics per stage: waiting and running come from the replicas' Stats; the arrival rate from the
requests the orchestrator admitted to the stage over the interval; the service rate of one
replica from completions over the interval: while the stage has a queue they measure its
capacity (smoothed); without one they are a lower bound (a replica does at least what it did).
It starts from ``SERVICE_RATE_PRIOR``. A request's wait budget (how long it may queue and still
meet its SLO) comes from the slack of recently finished requests (``Goodput.wait_budget``),
or is its SLO's tightest bound while none has finished.
"""
from __future__ import annotations

import threading
import time

from omnistage.elastic.policy import Action, PolicyState, Snapshot, StageLoad, decide
from omnistage.elastic.scaler import Scaler
from omnistage.graph.schema import ElasticConfig
from omnistage.graph.slo import slo_of, tightest
from omnistage.stages.runtime.orchestrator import Orchestrator
from omnistage.stages.runtime.replicas import ReplicaState

SERVICE_RATE_PRIOR = 1.0  # requests/s per replica until measured
SMOOTHING = 0.5


class Controller:
    def __init__(self, orchestrator: Orchestrator, elastic: ElasticConfig) -> None:
        self.orch = orchestrator
        self.elastic = elastic
        self.scaler = Scaler(orchestrator)
        self.state = PolicyState()
        self.service_rate = dict.fromkeys(orchestrator.arrivals, SERVICE_RATE_PRIOR)
        self._seen = (dict(orchestrator.arrivals), dict(orchestrator.completions), time.monotonic())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="elastic-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.elastic.interval_s):
            self.tick()

    def tick(self) -> list[Action]:
        self.scaler.poll()
        snap = self.snapshot()
        actions = decide(snap, self.elastic, self.state) if self.elastic.enabled else []
        for action in actions:
            self.apply(action)
        return actions

    def snapshot(self) -> Snapshot:
        arrivals, completions, then = self._seen
        now = time.monotonic()
        span = max(now - then, 1e-3)
        loads = {}
        for stage, group, lo, hi in self.units():
            unit = self.orch.plan.unit(stage, group)
            reps = self.scaler.replicas_of(unit)
            ready = [r for r in reps if r.state is ReplicaState.READY]
            counted = len(ready) + sum(1 for r in reps if r.state is ReplicaState.STARTING)
            waiting = sum(r.stats.get("waiting", 0.0) for r in ready)
            running = sum(r.stats.get("running", 0.0) for r in ready)
            done = self.orch.completions[unit] - completions[unit]
            if ready:
                measured = done / span / len(ready)
                if waiting > 0:  # saturated: completions measure capacity
                    self.service_rate[unit] = SMOOTHING * self.service_rate[unit] + (1 - SMOOTHING) * max(measured, 1e-3)
                else:  # not saturated: a replica does at least what it did
                    self.service_rate[unit] = max(self.service_rate[unit], measured)
            loads[unit] = StageLoad(waiting=waiting, running=running,
                                    arrival_rate=(self.orch.arrivals[unit] - arrivals[unit]) / span,
                                    service_rate=self.service_rate[unit], replicas=counted,
                                    min_replicas=lo, max_replicas=hi, wait_budget_s=self._wait_budget(stage, group, unit))
        self._seen = (dict(self.orch.arrivals), dict(self.orch.completions), now)
        return Snapshot(now, loads, free_devices=len(self.scaler.free))

    def _wait_budget(self, stage: str, group: str | None, unit: str) -> float | None:
        """From the slack of the unit's finished requests; before any, its tightest bound."""
        budget = self.orch.goodput.wait_budget(unit)
        if budget is not None:
            return budget
        return tightest(slo_of(self.orch.plan.stages[stage].config, group))

    def units(self) -> list[tuple[str, str | None, int, int]]:
        """(stage, group, min, max) for every stage and modality group the controller sizes."""
        return [(stage, group, lo, hi) for stage in self.orch.plan.order
                for group, (lo, hi, _) in self.orch.plan.stages[stage].config.resources.group_ranges().items()]

    def apply(self, action: Action) -> None:
        if action.kind == "add":
            self.scaler.add(action.stage, reason=action.reason)
        elif action.kind == "move" and action.donor is not None:
            self.scaler.move(action.donor, action.stage, reason=action.reason)
        elif action.kind == "remove":
            self.scaler.remove(action.stage, reason=action.reason)
