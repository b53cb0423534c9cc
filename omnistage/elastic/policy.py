"""The elastic controller's policy: a pure function from a metrics snapshot to actions.

Per unit (a stage, or a modality group of one) the policy reads a *sustained* arrival rate (the
mean over ``rate_window_s``, or the last quarter of it when that differs significantly: shifts
show within a quarter window, noise and lone bursts do not). From the rates it computes a
*target allocation* of all devices (``allocate``). Where the units' wait budgets are known (how
long a request may queue and still meet its SLO), it aims at goodput: each device goes where it
keeps the most requests within their SLO (``lost``: the recent arrivals replayed through a
fluid queue), then where it cuts queueing most. Without budgets every unit gets what serves its
rate at ``target_utilization`` (or at full utilization, or the least overload, when the devices
do not reach), the rest where they cut queueing most. A unit below its target for ``patience``
snapshots is *short* (hysteresis) and takes free devices (``add``) or devices of units above
their own target (``move``, a role switch), as long as the move pays over ``horizon_s``, the new
replica serving only after ``reload_s``: it keeps ``min_goodput_gain`` more requests within
their SLO than the donor loses, or, losing the donor none, it saves ``min_gain`` request-seconds
of queueing (``queueing``: a fluid model of each queue) more than it adds to the donor. Between
two modality groups of one stage ("stage/text" and "stage/multimodal") a move reloads nothing
(the replica only changes group), so it serves its new group at once. A unit that gave a replica
up does not take one for ``cooldown_s``, and the other way round. A unit above its target that
stayed idle with capacity to spare for a whole rate window returns one replica to the pool
(``remove``). See docs/elastic.md.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from omnistage.graph.schema import ElasticConfig

MIN_SAVED = 1.0  # requests within their SLO over the horizon: less counts as none
TAIL_HORIZONS = 4.0


@dataclass(frozen=True)
class StageLoad:
    waiting: float  # requests queued
    running: float  # requests in a batch
    arrival_rate: float  # requests/s since the last snapshot
    service_rate: float  # requests/s one replica completes (measured, or a prior)
    replicas: int  # ready or starting
    min_replicas: int = 1
    max_replicas: int = 1
    # How long a request may wait for a batch slot and still meet its SLO (its bound less its own
    # time in service); None where not known, and then only queueing counts.
    wait_budget_s: float | None = None
    # Arrival rates of the recent snapshots, oldest first, ``interval_s`` apart: their shape (its
    # bursts) is what ``lost`` replays, scaled to ``arrival_rate``.
    rate_history: tuple[float, ...] = ()
    interval_s: float = 1.0

    def delay(self, replicas: int | None = None) -> float:
        """Queueing delay a request arriving now would see."""
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
    """What the policy remembers between snapshots: smoothed arrival rates, streaks for
    hysteresis, the time of each unit's last action."""

    rates: dict[str, list[float]] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)
    idle: dict[str, int] = field(default_factory=dict)
    last_gain: dict[str, float] = field(default_factory=dict)  # when each unit last gained a replica
    last_give: dict[str, float] = field(default_factory=dict)  # ... and last gave one up


def decide(snap: Snapshot, config: ElasticConfig, state: PolicyState) -> list[Action]:
    """Units below their target allocation take devices, the one with most to gain first (one
    action per device); failing that, one idle unit gives a replica back to the pool."""
    loads = _sustained(snap, config, state)
    target = allocate(loads, sum(load.replicas for load in loads.values()) + snap.free_devices, config)
    _update_streaks(loads, target, config, state)
    if min(len(rates) for rates in state.rates.values()) < _windows(config)[1]:
        return []  # too little history to tell a shift from a burst
    # Cool-down against flapping: a unit that gave a replica up waits before it takes one, and
    # the other way round; it may go on growing (or shrinking) at once.
    may_gain = {s for s in loads if snap.time - state.last_give.get(s, -1e18) >= config.cooldown_s}
    may_give = {s for s in loads if snap.time - state.last_gain.get(s, -1e18) >= config.cooldown_s}
    short = [s for s in loads if s in may_gain and state.short.get(s, 0) >= _patience(loads[s], config)]
    short.sort(key=lambda s: _worth(loads[s], config, config.reload_s, target[s] - loads[s].replicas), reverse=True)
    for stage in short:
        actions = _grow_to(loads, target, snap.free_devices, config, stage, may_give)
        if actions:
            return _record(state, snap.time, actions)
    for stage in sorted(loads):
        load = loads[stage]
        if (state.idle.get(stage, 0) >= _windows(config)[0] and stage in may_give
                and load.replicas > max(load.min_replicas, target[stage])):
            return _record(state, snap.time, [Action("remove", stage, reason=(
                f"idle: delay {load.delay():.2f} s < {config.low_delay_s} s and {needed_replicas(load, config)} of "
                f"{load.replicas} replicas needed for {state.idle[stage]} snapshots"))])
    return []


def allocate(loads: Mapping[str, StageLoad], devices: int, config: ElasticConfig) -> dict[str, int]:
    """How many of ``devices`` each unit should have. First every unit gets what serves its
    arrival rate at ``target_utilization`` (``needed_replicas`` without the backlog), or, when
    the devices do not reach, at full utilization, or, when even that does not reach, as many as
    keep the overload least; the rest go one by one to the unit whose queueing (backlog
    included) they cut most. Savings shrink as a unit grows, so this greedy order minimizes the
    queueing. Where the units' wait budgets are known, goodput decides instead: from every unit's
    minimum, each device goes where it keeps the most requests within their SLO (``_fill``)."""
    if any(load.wait_budget_s is not None for load in loads.values()):
        return _fill({s: load.min_replicas for s, load in loads.items()}, loads, devices, config)
    steady = {s: replace(load, waiting=0.0) for s, load in loads.items()}
    for utilization in (config.target_utilization, 1.0):
        need = {s: needed_replicas(load, config, utilization) for s, load in steady.items()}
        if sum(need.values()) <= devices:
            return _fill(need, loads, devices, config)
    least = _fill({s: load.min_replicas for s, load in loads.items()}, steady, devices, config)
    return _fill(least, loads, devices, config)


def _fill(target: dict[str, int], loads: Mapping[str, StageLoad], devices: int, config: ElasticConfig) -> dict[str, int]:
    """``target`` plus the remaining devices, each to the unit it is worth most to
    (``_device_value``: the requests it keeps within their SLO, then the queueing it cuts); a
    device worth nothing to any unit stays unassigned."""
    target = dict(target)
    for _ in range(devices - sum(target.values())):
        open_ = [s for s in loads if target[s] < loads[s].max_replicas]
        if not open_:
            break
        spare = devices - sum(target.values())
        values = {s: _device_value(loads[s], target[s], spare, config) for s in open_}
        best = max(open_, key=values.__getitem__)
        if max(values[best]) <= 1e-9:
            break
        target[best] += 1
    return target


def _device_value(load: StageLoad, replicas: int, spare: int, config: ElasticConfig) -> tuple[float, float]:
    """What one more device is worth to a unit with ``replicas``: first the requests it keeps
    within their SLO over the horizon (``lost``, each replica at ``target_utilization``), per device over the best of up to ``spare``
    more (one device alone saves little for a unit several short, the last of them much), when
    that is at least ``MIN_SAVED``; then the request-seconds of queueing it cuts."""
    h, u = config.horizon_s, config.target_utilization
    now = lost(load, replicas, h, utilization=u)
    room = min(spare, load.max_replicas - replicas)
    saved = max(((now - lost(load, replicas + k, h, utilization=u)) / k for k in range(1, room + 1)), default=0.0)
    return (saved if saved >= MIN_SAVED else 0.0), _gain(load, replicas, config)


def needed_replicas(load: StageLoad, config: ElasticConfig, utilization: float | None = None) -> int:
    """Replicas that serve the arrival rate at ``utilization`` (``target_utilization`` unless
    given) and clear the backlog over the horizon, within ``[min_replicas, max_replicas]``."""
    rate = load.arrival_rate + load.waiting / config.horizon_s
    utilization = config.target_utilization if utilization is None else utilization
    want = math.ceil(rate / (max(load.service_rate, 1e-6) * utilization) - 1e-9)
    return min(load.max_replicas, max(load.min_replicas, want))


def queueing(load: StageLoad, replicas: int, horizon: float, later: int | None = None, after_s: float = 0.0) -> float:
    """Request-seconds spent queueing over ``horizon`` seconds with ``replicas`` (``later`` of
    them from ``after_s`` on): the fluid backlog (it grows at arrival rate minus capacity) plus
    the random queueing of a busy server, ``rho^2 / (1 - rho)`` requests on average."""
    later = replicas if later is None else later
    first = min(after_s, horizon)
    total, backlog = _segment(load, replicas, load.waiting, first)
    rest, _ = _segment(load, later, backlog, horizon - first)
    return total + rest


def lost(load: StageLoad, replicas: int, horizon: float, later: int | None = None, after_s: float = 0.0,
         utilization: float = 1.0) -> float:
    """Requests expected to miss their SLO over ``horizon`` seconds with ``replicas`` (``later``
    of them from ``after_s`` on), each serving ``utilization`` of its measured rate; none without
    a wait budget. Arrivals follow the unit's recent rates snapshot by snapshot (``rate_history``,
    repeated, scaled to ``arrival_rate``: the bursts it saw, at the current level), or
    ``arrival_rate`` throughout without a history. An arriving request misses while the backlog
    it finds is more than the unit serves within the budget, ``capacity * wait_budget_s`` (a
    fluid backlog, as in ``queueing``: it grows at arrival rate less capacity). A history longer
    than the horizon is replayed whole and its count scaled to the horizon; the arrivals after it
    that a backlog left at its end would still make late are added (``_drain_tail``)."""
    if load.wait_budget_s is None:
        return 0.0
    later = replicas if later is None else later
    budget = max(load.wait_budget_s, 0.0)
    history = load.rate_history or (load.arrival_rate,)
    mean = statistics.fmean(history)
    rates = [r * load.arrival_rate / mean for r in history] if mean > 0 else [load.arrival_rate]
    step = load.interval_s if load.rate_history else horizon
    span = max(horizon, step * len(rates))  # the whole history, so that its bursts count
    missed, backlog, t, i = 0.0, load.waiting, 0.0, 0
    while t < span - 1e-9:
        end = min(span, (i + 1) * step, after_s if t < after_s else span)
        capacity = (replicas if t < after_s else later) * utilization * max(load.service_rate, 1e-6)
        part, backlog = _missed(rates[i % len(rates)], capacity, budget, backlog, end - t)
        missed += part
        if end >= (i + 1) * step - 1e-9:
            i += 1
        t = end
    return missed * horizon / span + _drain_tail(load, later * utilization, budget, backlog, horizon)


def _drain_tail(load: StageLoad, replicas: float, budget: float, backlog: float, horizon: float) -> float:
    """Arrivals after the horizon that still find a backlog beyond the budget (a queue served
    in order makes them late until it drains), up to ``TAIL_HORIZONS`` horizons: so a unit
    whose backlog outlasts the horizon is not taken for lost whatever it gets."""
    capacity = replicas * max(load.service_rate, 1e-6)
    excess, drain = backlog - capacity * budget, capacity - load.arrival_rate
    if excess <= 0:
        return 0.0
    lasts = excess / drain if drain > 0 else float("inf")
    return load.arrival_rate * min(lasts, TAIL_HORIZONS * horizon)


def _missed(rate: float, capacity: float, budget: float, backlog: float, span: float) -> tuple[float, float]:
    """(arrivals over ``span`` that find a backlog beyond ``capacity * budget``, the backlog after)."""
    limit, slope = capacity * budget, rate - capacity
    if slope > 0:
        over = span - min(span, max(0.0, (limit - backlog) / slope))
    elif slope < 0:
        over = min(span, max(0.0, (backlog - limit) / -slope))
    else:
        over = span if backlog > limit else 0.0
    return rate * over, max(0.0, backlog + slope * span)


def _segment(load: StageLoad, replicas: int, backlog: float, span: float) -> tuple[float, float]:
    if span <= 0:
        return 0.0, backlog
    capacity = replicas * max(load.service_rate, 1e-6)
    slope = load.arrival_rate - capacity
    lasts = span if slope >= 0 else min(span, backlog / -slope)
    fluid = backlog * lasts + slope * lasts * lasts / 2
    rho = min(load.arrival_rate / capacity, 0.99) if replicas > 0 else 0.99
    return fluid + rho * rho / (1 - rho) * span, max(0.0, backlog + slope * span)


def _gain(load: StageLoad, replicas: int, config: ElasticConfig) -> float:
    return queueing(load, replicas, config.horizon_s) - queueing(load, replicas + 1, config.horizon_s)


def _worth(load: StageLoad, config: ElasticConfig, reload_s: float, upto: int = 1) -> tuple[float, float]:
    """What one more replica serving after ``reload_s`` saves a unit over the horizon: (requests
    kept within their SLO, per replica over the best of up to ``upto`` more, as in
    ``_device_value``; request-seconds of queueing)."""
    n, h, u = load.replicas, config.horizon_s, config.target_utilization
    now = lost(load, n, h, utilization=u)
    kept = max((now - lost(load, n, h, later=n + k, after_s=reload_s, utilization=u)) / k for k in range(1, max(upto, 1) + 1))
    return kept, queueing(load, n, h) - queueing(load, n, h, later=n + 1, after_s=reload_s)


def same_stage(unit: str, other: str) -> bool:
    """Whether two units are modality groups of one stage: a replica moves between them without
    a reload."""
    stage, slash, _ = unit.partition("/")
    return bool(slash) and other.partition("/")[0] == stage and "/" in other


def _cost(load: StageLoad, config: ElasticConfig) -> tuple[float, float]:
    """What a donor loses over the horizon with one replica fewer: (requests that then miss
    their SLO, request-seconds of queueing)."""
    n, h, u = load.replicas, config.horizon_s, config.target_utilization
    return (lost(load, n - 1, h, utilization=u) - lost(load, n, h, utilization=u),
            queueing(load, n - 1, h) - queueing(load, n, h))


def _move_value(worth: tuple[float, float], cost: tuple[float, float], config: ElasticConfig) -> tuple[float, float] | None:
    """A move's net (requests kept within their SLO, request-seconds of queueing saved), or None
    where it does not pay: it pays when it keeps ``min_goodput_gain`` requests more, or when it
    costs none (to within ``MIN_SAVED``) and saves ``min_gain`` request-seconds of queueing."""
    kept, queue = worth[0] - cost[0], worth[1] - cost[1]
    if kept >= config.min_goodput_gain or (kept > -MIN_SAVED and queue >= config.min_gain):
        return kept, queue
    return None


def _sustained(snap: Snapshot, config: ElasticConfig, state: PolicyState) -> dict[str, StageLoad]:
    """The snapshot with each unit's arrival rate replaced by its mean over the last
    ``rate_window_s`` (bursts included: they are work too), unless the last quarter of that
    window differs significantly (beyond three standard deviations of Poisson arrivals at the
    long mean): a rise is taken from the quarter's median (a burst shorter than half the quarter
    does not move it), a fall from the quarter's mean (a burst in it holds the fall back). So a
    shift shows within a quarter window in both directions, noise and lone bursts do not."""
    keep, short = _windows(config)
    out = {}
    for stage, load in snap.stages.items():
        recent = state.rates.setdefault(stage, [])
        recent.append(load.arrival_rate)
        del recent[:-keep]
        out[stage] = replace(load, arrival_rate=_rate(recent, short, config.interval_s), rate_history=tuple(recent),
                             interval_s=config.interval_s)
    return out


def _rate(recent: list[float], short: int, interval_s: float) -> float:
    rate = statistics.fmean(recent)
    if len(recent) <= short:
        return rate
    span = short * interval_s
    expected, margin = rate * span, 3 * math.sqrt(rate * span) + 1
    rise, fall = statistics.median(recent[-short:]), statistics.fmean(recent[-short:])
    if rise * span > expected + margin:
        return rise
    if fall * span < expected - margin:
        return fall
    return rate


def _patience(load: StageLoad, config: ElasticConfig) -> int:
    """Snapshots a unit must be short in a row before it grows: ``patience``, or one while its
    queueing delay is above ``high_delay_s`` (its requests are late already)."""
    return 1 if load.delay() > config.high_delay_s else config.patience


def _windows(config: ElasticConfig) -> tuple[int, int]:
    """Snapshots in the long rate window and in its last quarter."""
    keep = max(4, round(config.rate_window_s / config.interval_s))
    return keep, max(3, keep // 4)


def _update_streaks(loads: Mapping[str, StageLoad], target: Mapping[str, int], config: ElasticConfig,
                    state: PolicyState) -> None:
    for stage, load in loads.items():
        state.short[stage] = state.short.get(stage, 0) + 1 if target[stage] > load.replicas else 0
        spare = load.arrival_rate <= (load.replicas - 1) * load.service_rate * config.target_utilization / 2
        idle = load.delay() < config.low_delay_s and spare
        state.idle[stage] = state.idle.get(stage, 0) + 1 if idle else 0


def _grow_to(loads: Mapping[str, StageLoad], target: Mapping[str, int], free: int, config: ElasticConfig,
             stage: str, may_give: set[str]) -> list[Action]:
    loads, actions = dict(loads), []
    for _ in range(target[stage] - loads[stage].replicas):
        action = _grow(loads, target, free, config, stage, may_give)
        if action is None:
            break
        actions.append(action)
        loads[stage] = replace(loads[stage], replicas=loads[stage].replicas + 1)
        if action.donor is None:
            free -= 1
        else:
            loads[action.donor] = replace(loads[action.donor], replicas=loads[action.donor].replicas - 1)
    return actions


def _grow(loads: Mapping[str, StageLoad], target: Mapping[str, int], free: int, config: ElasticConfig, stage: str,
          may_give: set[str]) -> Action | None:
    load = loads[stage]
    why = (f"target {target[stage]} replicas, has {load.replicas} "
           f"({load.arrival_rate:.2f} req/s, {load.waiting:.0f} waiting, delay {load.delay():.2f} s)")
    if free > 0:
        return Action("add", stage, reason=f"{why}; a device is free")
    best: tuple[tuple[float, float], str] | None = None
    for donor, other in loads.items():
        if donor == stage or donor not in may_give or other.replicas <= max(other.min_replicas, target[donor]):
            continue
        worth = _worth(load, config, 0.0 if same_stage(stage, donor) else config.reload_s,
                       target[stage] - load.replicas)
        value = _move_value(worth, _cost(other, config), config)
        if value is not None and (best is None or value > best[0]):
            best = (value, donor)
    if best is None:
        return None
    (kept, queue), donor = best
    how = "regrouping one (no reload)" if same_stage(stage, donor) else "moving one"
    what = (f"keeps ~{kept:.0f} more requests within their SLO" if kept >= config.min_goodput_gain
            else f"saves ~{queue:.0f} request-seconds of queueing")
    return Action("move", stage, donor=donor, reason=f"{why}; {how} from {donor!r} {what} over {config.horizon_s:.0f} s")


def _record(state: PolicyState, now: float, actions: list[Action]) -> list[Action]:
    for action in actions:
        giver = action.donor if action.kind == "move" else action.stage if action.kind == "remove" else None
        if action.kind in ("add", "move"):
            state.last_gain[action.stage] = now
        if giver is not None:
            state.last_give[giver] = now
            state.short[giver] = state.idle[giver] = 0
    return actions
