"""A time-stepped simulator of a stage cluster, driven by the same policy as the real controller.

Each stage has a service-time model calibrated from measured step times: one engine step over
``b`` requests takes ``base_s + per_request_s * b`` and a request needs ``steps`` of them
(continuous batching: requests join and leave between steps, up to ``max_batch`` per replica).
Requests of a modality go to the stage that serves it. Devices move between stages with the
policy's actions: a moved device first drains (its replica takes no new requests and finishes
what it holds), then reloads for ``reload_s``, then serves its new stage; a removed one drains
into the free pool, from which ``add`` loads a stage. Units named "stage/group" are modality
groups of one stage: a move between two of them changes the replica's group at once (it goes on
with the requests it holds and takes its new group's). Time advances in ticks of ``dt`` seconds;
the controller runs every ``interval_s``. With ``shed``, a request that would wait past its wait
budget is refused on arrival, as a stage with ``slo: {shed: true}`` does
(omnistage.stages.runtime.shedding); the simulator predicts the wait from its models' exact
rates, where the real stage measures its replicas' pace.
"""
from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from omnistage.elastic.policy import Action, PolicyState, Snapshot, StageLoad, decide, same_stage
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
    stage: str
    arrival: float
    left: float  # steps to go


@dataclass
class _Replica:
    stage: str | None  # None: a free device
    ready_at: float = 0.0  # still loading before this time
    draining: bool = False
    next_stage: str | None = None  # where the device goes once drained (None: the free pool)
    active: list[_Request] = field(default_factory=list)
    clock: float = 0.0  # time into the current step


@dataclass
class SimResult:
    latencies: dict[str, list[float]]
    actions: list[tuple[float, Action]]
    duration: float
    shed: int = 0  # requests refused on arrival

    def goodput(self, slo: Mapping[str, float]) -> float:
        good = sum(1 for stage, lats in self.latencies.items() for lat in lats if lat <= slo[stage])
        return good / self.duration

    def p99(self) -> float:
        lats = sorted(lat for lats in self.latencies.values() for lat in lats)
        return lats[min(len(lats) - 1, int(0.99 * len(lats)))] if lats else 0.0


def simulate(models: Sequence[StageModel], allocation: Mapping[str, int], trace: Sequence[Arrival],
             duration: float, policy: ElasticConfig | None = None, interval_s: float = 1.0,
             dt: float = 0.02, max_replicas: int | None = None, free: int = 0,
             slo: Mapping[str, float] | None = None, shed: bool = False) -> SimResult:
    """Run ``trace`` on ``allocation`` (devices per stage) plus ``free`` devices in the pool;
    ``policy=None`` keeps it static. With ``slo`` (seconds per stage) the policy knows each
    unit's wait budget: its SLO less a request's time at a full batch; with ``shed`` too, a
    request predicted to wait longer is refused. Requests refused or still unfinished at
    ``duration`` count as missing their SLO (no latency)."""
    by_name = {m.name: m for m in models}
    replicas = [_Replica(stage) for stage, n in allocation.items() for _ in range(n)]
    replicas += [_Replica(None) for _ in range(free)]
    queues: dict[str, deque[_Request]] = {m.name: deque() for m in models}
    latencies: dict[str, list[float]] = {m.name: [] for m in models}
    arrivals, done_in_window = deque(sorted(trace, key=lambda a: a.time)), {m.name: 0 for m in models}
    seen_in_window = {m.name: 0 for m in models}
    state, actions, now, next_control, refused = PolicyState(), [], 0.0, interval_s, 0
    limit = max_replicas or len(replicas)
    if shed and slo is None:
        raise ValueError("shedding needs the SLOs")
    while now < duration:
        while arrivals and arrivals[0].time <= now:
            a = arrivals.popleft()
            seen_in_window[a.stage] += 1
            model = by_name[a.stage]
            if shed and _predicted_wait(model, replicas, queues[a.stage], now) > slo[a.stage] - _full_batch_s(model):
                refused += 1
                continue
            queues[a.stage].append(_Request(a.stage, a.time, model.steps))
        for rep in replicas:
            _tick(rep, by_name, queues, latencies, done_in_window, now, dt)
        _finish_drains(replicas, now, policy)
        now += dt
        if policy is not None and now >= next_control:
            snap = _snapshot(now, models, replicas, queues, seen_in_window, interval_s, limit, slo)
            for action in decide(snap, policy, state):
                actions.append((now, action))
                _apply(action, replicas, now, policy)
            seen_in_window = {m.name: 0 for m in models}
            next_control += interval_s
    return SimResult(latencies, actions, duration, refused)


def _full_batch_s(model: StageModel) -> float:
    return model.steps * model.step_s(model.max_batch)


def _predicted_wait(model: StageModel, replicas: list[_Replica], queue: deque[_Request], now: float) -> float:
    """How long a request arriving now would wait for a batch slot of ``model``'s stage: the
    requests ahead of it beyond the free slots, at the ready replicas' full-batch rate."""
    ready = [r for r in replicas if r.stage == model.name and not r.draining and now >= r.ready_at]
    ahead = len(queue) + 1 - sum(model.max_batch - len(r.active) for r in ready)
    if ahead <= 0:
        return 0.0
    return ahead / (len(ready) * model.capacity) if ready else float("inf")


def _tick(rep: _Replica, models: Mapping[str, StageModel], queues: Mapping[str, deque[_Request]],
          latencies: dict[str, list[float]], done: dict[str, int], now: float, dt: float) -> None:
    if rep.stage is None or now < rep.ready_at:
        return
    model = models[rep.stage]
    queue = queues[rep.stage]
    while not rep.draining and queue and len(rep.active) < model.max_batch:
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
            latencies[req.stage].append(now + dt - req.arrival)
            done[req.stage] += 1
        step = model.step_s(max(1, len(rep.active)))


def _finish_drains(replicas: list[_Replica], now: float, policy: ElasticConfig | None) -> None:
    for rep in replicas:
        if rep.draining and not rep.active:
            rep.stage, rep.draining, rep.next_stage = rep.next_stage, False, None
            rep.ready_at = now + (policy.reload_s if policy else 0.0)
            rep.clock = 0.0


def _snapshot(now: float, models: Sequence[StageModel], replicas: list[_Replica],
              queues: Mapping[str, deque[_Request]], seen: Mapping[str, int], interval_s: float,
              limit: int, slo: Mapping[str, float] | None) -> Snapshot:
    loads = {}
    for m in models:
        mine = [r for r in replicas if r.stage == m.name and not r.draining]
        running = sum(len(r.active) for r in mine)
        loads[m.name] = StageLoad(waiting=len(queues[m.name]), running=running, arrival_rate=seen[m.name] / interval_s,
                                  service_rate=m.capacity, replicas=len(mine), min_replicas=m.min_replicas,
                                  max_replicas=limit, wait_budget_s=None if slo is None else
                                  slo[m.name] - _full_batch_s(m))
    return Snapshot(now, loads, free_devices=sum(1 for r in replicas if r.stage is None))


def _apply(action: Action, replicas: list[_Replica], now: float, policy: ElasticConfig) -> None:
    """add: a free device loads the stage; remove and move: the stage's replica that drains
    fastest takes no new requests and, once its batch is done, goes to the pool or loads the
    receiving stage; a move between groups of one stage regroups that replica at once."""
    if action.kind == "add":
        device = next(r for r in replicas if r.stage is None)
        device.stage, device.ready_at = action.stage, now + policy.reload_s
        return
    giver = action.donor if action.kind == "move" else action.stage
    donors = [r for r in replicas if r.stage == giver and not r.draining]
    victim = min(donors, key=lambda r: len(r.active))
    if action.kind == "move" and same_stage(giver, action.stage):
        victim.stage = action.stage
        return
    victim.draining, victim.next_stage = True, action.stage if action.kind == "move" else None


def best_static(models: Sequence[StageModel], trace: Sequence[Arrival], devices: int, duration: float,
                slo: Mapping[str, float], dt: float = 0.05, shed: bool = False) -> tuple[dict[str, int], float]:
    """The static split of ``devices`` (every stage at least ``min_replicas``) with the highest
    goodput on ``trace``, and that goodput. Without the controller the stages do not interact,
    so each stage is simulated alone per replica count and the best split is found by dynamic
    programming over the stages. Above 32 devices the counts are sampled (every ``devices/32``);
    a count between two samples is credited with the goodput of the larger one, which can only
    overstate the static splits. ``shed``: the stages shed (``simulate``)."""
    good = {m.name: _goodput_by_count(m, [a for a in trace if a.stage == m.name], devices, duration, slo, dt, shed)
            for m in models}
    best: dict[int, tuple[float, dict[str, int]]] = {0: (0.0, {})}
    for m in models:
        step: dict[int, tuple[float, dict[str, int]]] = {}
        for used, (value, split) in best.items():
            for n in range(max(1, m.min_replicas), devices - used + 1):
                total = value + good[m.name][n]
                if used + n not in step or total > step[used + n][0]:
                    step[used + n] = (total, {**split, m.name: n})
        best = step
    value, split = best[devices]
    return split, value


def _goodput_by_count(model: StageModel, trace: Sequence[Arrival], devices: int, duration: float,
                      slo: Mapping[str, float], dt: float, shed: bool) -> list[float]:
    stride = max(1, -(-devices // 32))
    counts = sorted({*range(1, min(devices, 32) + 1), *range(stride, devices + 1, stride), devices})
    measured: dict[int, float] = {}
    for n in counts:
        measured[n] = simulate([model], {model.name: n}, trace, duration, dt=dt, slo=slo, shed=shed).goodput(slo)
        if measured[n] * duration >= len(trace):  # every request on time: more replicas cannot help
            break
    top = max(measured)
    return [measured[min((c for c in measured if c >= n), default=top)] for n in range(devices + 1)]


def shifting_trace(duration: float, rates: Sequence[Mapping[str, float]], seed: int = 0,
                   burst_every_s: float = 20.0, burst_factor: float = 3.0, burst_s: float = 2.0) -> list[Arrival]:
    """Poisson arrivals whose mix changes phase by phase (``rates``: mean requests/s per stage in
    each equal-length phase), arriving ``burst_factor`` x faster for ``burst_s`` every
    ``burst_every_s`` (the rates are means over the whole phase, bursts included)."""
    rng = random.Random(seed)
    out = []
    phase_len = duration / len(rates)
    mean_factor = 1 + (burst_factor - 1) * burst_s / burst_every_s
    for i, phase in enumerate(rates):
        for stage, rate in phase.items():
            t = i * phase_len
            while True:
                bursting = (t % burst_every_s) < burst_s
                t += rng.expovariate(rate / mean_factor * (burst_factor if bursting else 1.0))
                if t >= (i + 1) * phase_len:
                    break
                out.append(Arrival(t, stage))
    return sorted(out, key=lambda a: a.time)
