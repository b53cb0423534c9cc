"""A time-stepped simulator of a stage cluster, driven by the same policy as the real controller.

Each stage has a service-time model calibrated from measured step times: one engine step over
``b`` requests takes ``base_s + per_request_s * b`` and a request needs ``steps`` of them
(continuous batching: requests join and leave between steps, up to ``max_batch`` per replica).
Requests of a modality go to the stage that serves it. Devices move between stages with the
policy's actions: a moved device first drains (its replica takes no new requests and finishes
what it holds), then reloads for ``reload_s``, then serves its new stage. Time advances in
ticks of ``dt`` seconds; the controller runs every ``interval_s``.
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from omnistage.elastic.policy import Action, PolicyState, Snapshot, StageLoad, decide
from omnistage.graph.schema import ElasticConfig


@dataclass(frozen=True)
class StageModel:
    name: str
    base_s: float
    per_request_s: float
    steps: int
    max_batch: int
    min_replicas: int = 1

    def step_s(self, batch: int) -> float:
        return self.base_s + self.per_request_s * batch

    @property
    def capacity(self) -> float:
        """Requests/s one replica completes at full batch."""
        return self.max_batch / (self.steps * self.step_s(self.max_batch))


@dataclass(frozen=True)
class Arrival:
    time: float
    stage: str


@dataclass
class _Request:
    arrival: float
    left: float  # steps to go


@dataclass
class _Replica:
    stage: str
    ready_at: float = 0.0  # still loading before this time
    draining_to: str | None = None
    active: list[_Request] = field(default_factory=list)
    clock: float = 0.0  # time into the current step


@dataclass
class SimResult:
    latencies: dict[str, list[float]]
    actions: list[tuple[float, Action]]
    duration: float

    def goodput(self, slo: Mapping[str, float]) -> float:
        good = sum(1 for stage, lats in self.latencies.items() for lat in lats if lat <= slo[stage])
        return good / self.duration

    def p99(self) -> float:
        lats = sorted(lat for lats in self.latencies.values() for lat in lats)
        return lats[min(len(lats) - 1, int(0.99 * len(lats)))] if lats else 0.0


def simulate(models: Sequence[StageModel], allocation: Mapping[str, int], trace: Sequence[Arrival],
             duration: float, policy: ElasticConfig | None = None, interval_s: float = 1.0,
             dt: float = 0.02, max_replicas: int | None = None) -> SimResult:
    """Run ``trace`` on ``allocation`` (devices per stage); ``policy=None`` keeps it static.
    Requests still unfinished at ``duration`` count as missing their SLO (no latency)."""
    by_name = {m.name: m for m in models}
    replicas = [_Replica(stage) for stage, n in allocation.items() for _ in range(n)]
    queues: dict[str, deque[_Request]] = {m.name: deque() for m in models}
    latencies: dict[str, list[float]] = {m.name: [] for m in models}
    arrivals, done_in_window = deque(sorted(trace, key=lambda a: a.time)), {m.name: 0 for m in models}
    seen_in_window = {m.name: 0 for m in models}
    state, actions, now, next_control = PolicyState(), [], 0.0, interval_s
    limit = max_replicas or len(replicas)
    while now < duration:
        while arrivals and arrivals[0].time <= now:
            a = arrivals.popleft()
            queues[a.stage].append(_Request(a.time, by_name[a.stage].steps))
            seen_in_window[a.stage] += 1
        for rep in replicas:
            _tick(rep, by_name, queues, latencies, done_in_window, now, dt)
        _finish_drains(replicas, now, policy)
        now += dt
        if policy is not None and now >= next_control:
            snap = _snapshot(now, models, replicas, queues, seen_in_window, interval_s, limit)
            for action in decide(snap, policy, state):
                actions.append((now, action))
                _apply(action, replicas, snap, now, policy)
            seen_in_window = {m.name: 0 for m in models}
            next_control += interval_s
    return SimResult(latencies, actions, duration)


def _tick(rep: _Replica, models: Mapping[str, StageModel], queues: Mapping[str, deque[_Request]],
          latencies: dict[str, list[float]], done: dict[str, int], now: float, dt: float) -> None:
    if now < rep.ready_at:
        return
    model = models[rep.stage]
    queue = queues[rep.stage]
    while rep.draining_to is None and queue and len(rep.active) < model.max_batch:
        rep.active.append(queue.popleft())
    if not rep.active:
        rep.clock = 0.0
        return
    rep.clock += dt
    step = model.step_s(len(rep.active))
    while rep.clock >= step and rep.active:
        rep.clock -= step
        for req in rep.active:
            req.left -= 1
        for req in [r for r in rep.active if r.left <= 0]:
            rep.active.remove(req)
            latencies[rep.stage].append(now + dt - req.arrival)
            done[rep.stage] += 1
        step = model.step_s(max(1, len(rep.active)))


def _finish_drains(replicas: list[_Replica], now: float, policy: ElasticConfig | None) -> None:
    for rep in replicas:
        if rep.draining_to is not None and not rep.active:
            rep.stage, rep.draining_to = rep.draining_to, None
            rep.ready_at = now + (policy.reload_s if policy else 0.0)
            rep.clock = 0.0


def _snapshot(now: float, models: Sequence[StageModel], replicas: list[_Replica],
              queues: Mapping[str, deque[_Request]], seen: Mapping[str, int], interval_s: float,
              limit: int) -> Snapshot:
    loads = {}
    for m in models:
        mine = [r for r in replicas if r.stage == m.name and r.draining_to is None]
        running = sum(len(r.active) for r in mine)
        loads[m.name] = StageLoad(waiting=len(queues[m.name]), running=running, arrival_rate=seen[m.name] / interval_s,
                                  service_rate=m.capacity, replicas=len(mine), min_replicas=m.min_replicas,
                                  max_replicas=limit)
    return Snapshot(now, loads, free_devices=0)


def _apply(action: Action, replicas: list[_Replica], snap: Snapshot, now: float, policy: ElasticConfig) -> None:
    if action.kind != "move" or action.donor is None:
        return  # the simulated pool has no free devices: every device always belongs to a stage
    donors = [r for r in replicas if r.stage == action.donor and r.draining_to is None]
    victim = min(donors, key=lambda r: len(r.active))  # the replica that drains fastest
    victim.draining_to = action.stage


def shifting_trace(duration: float, rates: Sequence[Mapping[str, float]], seed: int = 0,
                   burst_every_s: float = 20.0, burst_factor: float = 3.0) -> list[Arrival]:
    """Poisson arrivals whose mix changes phase by phase (``rates``: requests/s per stage in each
    equal-length phase), with a burst of ``burst_factor`` x the rate for 2 s every ``burst_every_s``."""
    rng = random.Random(seed)
    out = []
    phase_len = duration / len(rates)
    for i, phase in enumerate(rates):
        for stage, rate in phase.items():
            t = i * phase_len
            while True:
                bursting = (t % burst_every_s) < 2.0
                t += rng.expovariate(rate * (burst_factor if bursting else 1.0))
                if t >= (i + 1) * phase_len:
                    break
                out.append(Arrival(t, stage))
    return sorted(out, key=lambda a: a.time)
