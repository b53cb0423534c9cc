"""Early shedding: a request that would queue past its SLO is refused at admission (503).

A stage sheds when its ``slo`` says ``shed: true``. A request that cannot meet its bounds still
costs a batch slot, and in a FIFO queue every request behind it waits for it; refusing it at
once (the client may retry, or go elsewhere) keeps the rest within their SLO.

The replica picked for a request holds ``ahead`` requests and runs ``max_batch`` at a time, so
the request waits for ``ahead + 1 - max_batch`` of them to finish. Its predicted wait is that
many times the replica's recent time between completions, counted only between completions
that left it still full (a replica with free slots completes at the pace requests arrive, not
at its own). It is refused when the prediction exceeds its wait budget: the median slack (SLO
bound less latency, tightest bound) of the unit's recent requests that found a free slot, or
the bound itself before any finished. Without a measured pace, nothing is refused.
"""
from __future__ import annotations

import statistics
import threading
import time
from collections import deque

from omnistage.errors import Overloaded
from omnistage.graph.plan import GraphPlan
from omnistage.graph.slo import slo_of, tightest
from omnistage.stages.runtime.goodput import Goodput
from omnistage.stages.runtime.replicas import Replica

GAP_SAMPLES = 16  # completions per replica its pace is read from


class Shedder:
    def __init__(self, plan: GraphPlan, goodput: Goodput) -> None:
        self.plan = plan
        self.goodput = goodput  # keeps the slack of requests that found a free slot
        self.shed: dict[str, int] = dict.fromkeys(plan.units(), 0)  # requests refused, per unit
        self._gaps: dict[tuple[str, int], deque[float]] = {}
        self._full_since: dict[tuple[str, int], float] = {}  # a full replica's last completion
        self._lock = threading.Lock()

    def sheds(self, stage: str) -> bool:
        slo = self.plan.stages[stage].config.slo
        return slo is not None and slo.shed

    def admit(self, stage: str, group: str, replica: Replica, ahead: int) -> bool:
        """Whether the request queues at ``replica`` (which held ``ahead`` requests before it).
        Raises Overloaded (503) when the wait would exceed the budget (a stage that sheds)."""
        queued = ahead + 1 - self.plan.stages[stage].config.batching.max_batch
        if queued <= 0:
            return False
        wait, budget = self.predicted_wait(replica, queued), self.wait_budget(stage, group)
        if wait is not None and budget is not None and wait > budget:
            unit = self.plan.unit(stage, group)
            with self._lock:
                self.shed[unit] += 1
            raise Overloaded(f"stage {stage!r} cannot serve the request within its SLO now (predicted wait "
                             f"{wait:.2f} s, budget {budget:.2f} s); retry later", status=503)
        return True

    def predicted_wait(self, replica: Replica, queued: int) -> float | None:
        """Seconds until ``queued`` of the replica's requests have finished, at its recent pace
        (None: not measured yet)."""
        with self._lock:
            gaps = list(self._gaps.get((replica.stage, replica.index), ()))
        return queued * statistics.median(gaps) if gaps else None

    def wait_budget(self, stage: str, group: str) -> float | None:
        """How long a request of the unit may queue and still meet its tightest bound."""
        calm = self.goodput.calm_slack(self.plan.unit(stage, group))
        return calm if calm is not None else tightest(slo_of(self.plan.stages[stage].config, group))

    def completed(self, replica: Replica, still_held: int) -> None:
        """``replica`` finished a request and now holds ``still_held``."""
        key, now = (replica.stage, replica.index), time.perf_counter()
        full = still_held >= self.plan.stages[replica.stage].config.batching.max_batch
        with self._lock:
            since = self._full_since.pop(key, None)
            if since is not None:
                self._gaps.setdefault(key, deque(maxlen=GAP_SAMPLES)).append(now - since)
            if full:
                self._full_since[key] = now
