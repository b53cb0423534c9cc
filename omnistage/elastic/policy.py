"""The elastic controller's policy: a pure function from a metrics snapshot to actions.

For each stage it estimates the queueing delay a request arriving now would see,

    delay = (waiting + running) / (replicas * service_rate)

(``service_rate``: requests one replica completes per second, measured). A stage whose delay
stays above ``high_delay_s`` for ``patience`` consecutive snapshots (hysteresis) asks for a
device. The device comes from the free pool (``add``) or from the stage whose delay would stay
lowest without it (``move``, a role switch), but only when the move pays: the queueing time it
saves over the next ``horizon_s`` must exceed what the reload costs (``reload_s`` of lost
service on the donor plus the request's own wait for the new replica). A stage that has been
idle (delay under ``low_delay_s``) for ``patience`` snapshots with more than ``min`` replicas
gives one back (``remove``). Every stage waits ``cooldown_s`` between actions.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class PolicyConfig:
    high_delay_s: float = 2.0
    low_delay_s: float = 0.2
    patience: int = 2
    cooldown_s: float = 10.0
    reload_s: float = 5.0
    horizon_s: float = 30.0


@dataclass
class PolicyState:
    """What the policy remembers between snapshots (streaks for hysteresis, last actions)."""

    hot: dict[str, int] = field(default_factory=dict)
    idle: dict[str, int] = field(default_factory=dict)
    last_action: dict[str, float] = field(default_factory=dict)


def decide(snap: Snapshot, config: PolicyConfig, state: PolicyState) -> list[Action]:
    """At most one action per snapshot: the hottest stage's, else one idle stage's give-back."""
    _update_streaks(snap, config, state)
    ready = {s for s in snap.stages if snap.time - state.last_action.get(s, -1e18) >= config.cooldown_s}
    hot = sorted((s for s, n in state.hot.items() if n >= config.patience and s in ready
                  and snap.stages[s].replicas < snap.stages[s].max_replicas),
                 key=lambda s: -snap.stages[s].delay())
    for stage in hot:
        action = _grow(snap, config, stage, ready)
        if action is not None:
            return _record(state, snap.time, action)
    for stage in sorted(snap.stages):
        load = snap.stages[stage]
        if state.idle.get(stage, 0) >= config.patience and stage in ready and load.replicas > load.min_replicas:
            return _record(state, snap.time, Action("remove", stage, reason=(
                f"idle: delay {load.delay():.2f} s < {config.low_delay_s} s for {state.idle[stage]} snapshots")))
    return []


def _update_streaks(snap: Snapshot, config: PolicyConfig, state: PolicyState) -> None:
    for stage, load in snap.stages.items():
        delay = load.delay()
        state.hot[stage] = state.hot.get(stage, 0) + 1 if delay > config.high_delay_s else 0
        state.idle[stage] = state.idle.get(stage, 0) + 1 if delay < config.low_delay_s else 0


def _grow(snap: Snapshot, config: PolicyConfig, stage: str, ready: set[str]) -> Action | None:
    load = snap.stages[stage]
    why = f"delay {load.delay():.2f} s > {config.high_delay_s} s"
    if snap.free_devices > 0:
        return Action("add", stage, reason=f"{why}; a device is free")
    saved = _saved(load, config)
    best: tuple[float, str] | None = None
    for donor, other in snap.stages.items():
        if donor == stage or donor not in ready or other.replicas <= other.min_replicas:
            continue
        after = other.delay(other.replicas - 1)
        if after > config.high_delay_s:
            continue  # the donor would become the bottleneck
        cost = config.reload_s * other.arrival_rate * (1 + after) + config.reload_s * load.arrival_rate
        gain = saved - cost
        if gain > 0 and (best is None or gain > best[0]):
            best = (gain, donor)
    if best is None:
        return None
    return Action("move", stage, donor=best[1], reason=f"{why}; move from {best[1]!r} saves ~{best[0]:.0f} "
                                                         f"request-seconds over {config.horizon_s:.0f} s")


def _saved(load: StageLoad, config: PolicyConfig) -> float:
    """Request-seconds of queueing one more replica saves over the horizon (after it loads)."""
    now, more = load.delay(), load.delay(load.replicas + 1)
    requests = load.waiting + load.running + load.arrival_rate * max(0.0, config.horizon_s - config.reload_s)
    return max(0.0, now - more) * requests


def _record(state: PolicyState, now: float, action: Action) -> list[Action]:
    for stage in (action.stage, action.donor):
        if stage is not None:
            state.last_action[stage] = now
            state.hot[stage] = state.idle[stage] = 0
    return [action]
