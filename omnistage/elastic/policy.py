"""The elastic controller's policy: a pure function from a metrics snapshot to actions.

For each stage it estimates the queueing delay a request arriving now would see,

    delay = (waiting + running) / (replicas * service_rate)

(``service_rate``: requests one replica completes per second, measured). A stage whose delay
stays above ``high_delay_s`` for ``patience`` consecutive snapshots (hysteresis) asks for a
device. The device comes from the free pool (``add``) or from another stage (``move``, a role
switch), but only when the move pays: the queueing it saves the receiver over the next
``horizon_s`` (counting only the time after the ``reload_s`` the new replica needs to load)
must exceed the queueing it adds to the donor over the same horizon; the donor that loses
least is chosen. Both are in request-seconds, so the policy balances queueing delay weighted by
how many requests feel it. A hot stage asks for as many replicas as serve its arrivals at
``target_utilization`` and clear its backlog over the horizon. A stage that has been
idle (delay under ``low_delay_s``) for ``patience`` snapshots with more than ``min`` replicas
gives one back (``remove``). Every stage waits ``cooldown_s`` between actions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from omnistage.graph.schema import ElasticConfig


@dataclass(frozen=True)
class StageLoad:
    waiting: float  # requests queued
    running: float  # requests in a batch
    arrival_rate: float  # requests/s recently
    service_rate: float  # requests/s one replica completes (measured, or a prior)
    replicas: int  # ready or starting
    min_replicas: int = 1
    max_replicas: int = 1

    def delay(self, replicas: int | None = None) -> float:
        n = self.replicas if replicas is None else replicas
        if n <= 0:
            return float("inf") if self.waiting + self.running + self.arrival_rate > 0 else 0.0
        return (self.waiting + self.running) / (n * max(self.service_rate, 1e-6))


@dataclass(frozen=True)
class Snapshot:
    time: float
    stages: Mapping[str, StageLoad]
    free_devices: int


@dataclass(frozen=True)
class Action:
    kind: str  # "add" | "remove" | "move"
    stage: str  # the stage that gains (add, move) or gives back (remove)
    donor: str | None = None  # move: the stage that gives up a replica
    reason: str = ""


@dataclass
class PolicyState:
    """What the policy remembers between snapshots (streaks for hysteresis, last actions)."""

    hot: dict[str, int] = field(default_factory=dict)
    idle: dict[str, int] = field(default_factory=dict)
    last_action: dict[str, float] = field(default_factory=dict)


def decide(snap: Snapshot, config: ElasticConfig, state: PolicyState) -> list[Action]:
    """The hottest stage that can grow gets the replicas it needs (one action per device: from
    the free pool first, then the donors that lose least); else one idle stage gives one back."""
    _update_streaks(snap, config, state)
    ready = {s for s in snap.stages if snap.time - state.last_action.get(s, -1e18) >= config.cooldown_s}
    hot = sorted((s for s, n in state.hot.items() if n >= config.patience and s in ready
                  and snap.stages[s].replicas < snap.stages[s].max_replicas),
                 key=lambda s: -snap.stages[s].delay())
    for stage in hot:
        actions = _grow_to_need(snap, config, stage, ready)
        if actions:
            return _record(state, snap.time, actions)
    for stage in sorted(snap.stages):
        load = snap.stages[stage]
        if state.idle.get(stage, 0) >= config.patience and stage in ready and load.replicas > load.min_replicas:
            return _record(state, snap.time, [Action("remove", stage, reason=(
                f"idle: delay {load.delay():.2f} s < {config.low_delay_s} s for {state.idle[stage]} snapshots"))])
    return []


def needed_replicas(load: StageLoad, config: ElasticConfig) -> int:
    """Replicas that serve the arrival rate at ``target_utilization`` and clear the backlog over
    the horizon; at least one more than now (the stage is hot), at most ``max_replicas``."""
    rate = load.arrival_rate + (load.waiting + load.running) / config.horizon_s
    want = math.ceil(rate / (max(load.service_rate, 1e-6) * config.target_utilization))
    return min(load.max_replicas, max(load.replicas + 1, want))


def _grow_to_need(snap: Snapshot, config: ElasticConfig, stage: str, ready: set[str]) -> list[Action]:
    loads, free, actions = dict(snap.stages), snap.free_devices, []
    for _ in range(needed_replicas(loads[stage], config) - loads[stage].replicas):
        action = _grow(Snapshot(snap.time, loads, free), config, stage, ready)
        if action is None:
            break
        actions.append(action)
        loads[stage] = replace(loads[stage], replicas=loads[stage].replicas + 1)
        if action.donor is None:
            free -= 1
        else:
            loads[action.donor] = replace(loads[action.donor], replicas=loads[action.donor].replicas - 1)
    return actions


def _update_streaks(snap: Snapshot, config: ElasticConfig, state: PolicyState) -> None:
    for stage, load in snap.stages.items():
        delay = load.delay()
        state.hot[stage] = state.hot.get(stage, 0) + 1 if delay > config.high_delay_s else 0
        state.idle[stage] = state.idle.get(stage, 0) + 1 if delay < config.low_delay_s else 0


def _grow(snap: Snapshot, config: ElasticConfig, stage: str, ready: set[str]) -> Action | None:
    load = snap.stages[stage]
    why = f"delay {load.delay():.2f} s > {config.high_delay_s} s"
    if snap.free_devices > 0:
        return Action("add", stage, reason=f"{why}; a device is free")
    saved = _saved(load, config)
    best: tuple[float, str] | None = None
    for donor, other in snap.stages.items():
        if donor == stage or donor not in ready or other.replicas <= other.min_replicas:
            continue
        gain = saved - _lost(other, config)
        if gain > 0 and (best is None or gain > best[0]):
            best = (gain, donor)
    if best is None:
        return None
    return Action("move", stage, donor=best[1], reason=f"{why}; moving one from {best[1]!r} saves ~{best[0]:.0f} "
                                                         f"request-seconds of queueing over {config.horizon_s:.0f} s")


def _saved(load: StageLoad, config: ElasticConfig) -> float:
    """Request-seconds of queueing one more replica saves over the horizon (after it loads)."""
    now, more = load.delay(), load.delay(load.replicas + 1)
    requests = load.waiting + load.running + load.arrival_rate * max(0.0, config.horizon_s - config.reload_s)
    return max(0.0, now - more) * requests


def _lost(load: StageLoad, config: ElasticConfig) -> float:
    """Request-seconds of queueing the donor adds over the horizon with one replica fewer."""
    now, fewer = load.delay(), load.delay(load.replicas - 1)
    requests = load.waiting + load.running + load.arrival_rate * config.horizon_s
    return max(0.0, fewer - now) * requests


def _record(state: PolicyState, now: float, actions: list[Action]) -> list[Action]:
    for action in actions:
        for stage in (action.stage, action.donor):
            if stage is not None:
                state.last_action[stage] = now
                state.hot[stage] = state.idle[stage] = 0
    return actions
