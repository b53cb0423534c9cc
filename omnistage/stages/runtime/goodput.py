"""Goodput per elastic unit: requests that met their SLO (omnistage.graph.slo), and their rate.

Every request a unit served counts there once it ends: as met when its latencies (from its
handle) are within the unit's bounds, else as missed; a failed request is missed in every unit
it was sent to. ``rate()`` is the met requests per second over the last ``window_s``.
``wait_budget(unit)`` is how long a request may queue and still meet the unit's bounds, read
from the slack of the last ``SLACK_SAMPLES`` finished requests: its 90th percentile, the slack
of a request that hardly waited (the elastic policy counts the requests a queue would make late
with it). ``calm_slack(unit)`` is the median slack of the recent requests that found a free
batch slot there (the budget early shedding holds a queued request to).
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable

from omnistage.graph.plan import GraphPlan
from omnistage.graph.slo import slack, slo_of
from omnistage.stages.runtime.handle import RequestHandle

WINDOW_S = 60.0
SLACK_SAMPLES = 200
CALM_SAMPLES = 64


class Goodput:
    def __init__(self, plan: GraphPlan, window_s: float = WINDOW_S) -> None:
        self.plan, self.window_s = plan, window_s
        self.met: dict[str, int] = dict.fromkeys(plan.units(), 0)
        self.missed: dict[str, int] = dict.fromkeys(plan.units(), 0)
        self._recent: dict[str, deque[float]] = {unit: deque() for unit in self.met}  # when each met request ended
        self._slack: dict[str, deque[float]] = {unit: deque(maxlen=SLACK_SAMPLES) for unit in self.met}
        self._calm: dict[str, deque[float]] = {unit: deque(maxlen=CALM_SAMPLES) for unit in self.met}
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def finished(self, stages: Iterable[str], group: str, handle: RequestHandle,
                 queued: Collection[str] = ()) -> None:
        """``queued``: the stages where the request waited for a batch slot."""
        end = handle.finished_at if handle.finished_at is not None else time.perf_counter()
        ttft = None if handle.first_at is None else handle.first_at - handle.created_at
        ttfp = None if handle.first_audio_at is None else handle.first_audio_at - handle.created_at
        e2e = end - handle.created_at
        for stage in stages:
            left = slack(slo_of(self.plan.stages[stage].config, group), e2e, ttft, ttfp)
            unit = self.plan.unit(stage, group)
            self._count(unit, left is None or left >= 0)
            if left is not None:
                with self._lock:
                    self._slack[unit].append(left)
                    if stage not in queued:
                        self._calm[unit].append(left)

    def failed(self, stages: Iterable[str], group: str) -> None:
        for stage in stages:
            self._count(self.plan.unit(stage, group), False)

    def rate(self) -> dict[str, float]:
        """Met requests per second per unit over the last ``window_s`` (or since the start)."""
        now = time.monotonic()
        span = max(1e-3, min(self.window_s, now - self._started))
        with self._lock:
            return {unit: len(self._trim(times, now)) / span for unit, times in self._recent.items()}

    def wait_budget(self, unit: str) -> float | None:
        """Seconds a request of ``unit`` may queue and still meet its bounds (None before any
        finished)."""
        with self._lock:
            samples = sorted(self._slack[unit])
        return samples[int(0.9 * (len(samples) - 1))] if samples else None

    def calm_slack(self, unit: str) -> float | None:
        """The median slack of the unit's recent requests that did not queue (None: none yet)."""
        with self._lock:
            samples = list(self._calm[unit])
        return statistics.median(samples) if samples else None

    def _count(self, unit: str, ok: bool) -> None:
        with self._lock:
            (self.met if ok else self.missed)[unit] += 1
            if ok:
                now = time.monotonic()
                self._trim(self._recent[unit], now).append(now)

    def _trim(self, times: deque[float], now: float) -> deque[float]:
        while times and times[0] < now - self.window_s:
            times.popleft()
        return times
