"""Which requests a diffusion engine starts, and which it advances each step.

Requests share a model call only within a bucket (same latent and embedding shape). Two
policies:

- ``FixedBatch``: at most ``max_batch`` requests per step and running per latent shape; each
  step serves the bucket of the request that has waited longest since it last advanced.
- ``ComputeBudget``: a request's cost per step is its rows (2 with classifier-free guidance)
  times its latent's elements; a step takes up to ``budget`` of cost, so small images batch
  wide and large ones narrow. Buckets take turns by deficit round-robin: a bucket's turn adds
  ``budget`` to its deficit, it advances its longest-waiting requests while their cost fits
  the deficit, and keeps what is left only while it has requests it could not take (a request
  costlier than the budget waits a turn or two, gathering deficit, without holding up the
  others). Each bucket admits oldest first up to one step's budget of running cost, and a
  request that does not fit holds back the newer ones of its shape, so none is starved.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

Job = Any  # engine.Job (a dataclass with params, order, served, bucket)


class Admission(Protocol):
    def admit(self, waiting: Sequence[Job], running: Sequence[Job]) -> list[Job]: ...

    def pick(self, running: Sequence[Job]) -> list[Job]: ...


def by_staleness(jobs: Sequence[Job]) -> list[Job]:
    """Longest since last advanced first, then oldest."""
    return sorted(jobs, key=lambda j: (j.served, j.order))


class FixedBatch:
    def __init__(self, max_batch: int, shape: Callable[[Job], tuple[int, ...]]) -> None:
        self.max_batch, self.shape = max_batch, shape

    def admit(self, waiting: Sequence[Job], running: Sequence[Job]) -> list[Job]:
        """Oldest first, at most ``max_batch`` running per latent shape (so a full bucket never
        holds back a request of another size) and ``max_batch`` started at once."""
        counts = Counter(self.shape(job) for job in running)
        chosen = []
        for job in waiting:
            shape = self.shape(job)
            if counts[shape] < self.max_batch and len(chosen) < self.max_batch:
                counts[shape] += 1
                chosen.append(job)
        return chosen

    def pick(self, running: Sequence[Job]) -> list[Job]:
        if not running:
            return []
        ranked = by_staleness(running)
        bucket = ranked[0].bucket
        return [j for j in ranked if j.bucket == bucket][:self.max_batch]


class ComputeBudget:
    def __init__(self, budget: float, shape: Callable[[Job], tuple[int, ...]]) -> None:
        self.budget, self.shape = budget, shape
        self.deficit: dict[Any, float] = {}
        self.ring: list[Any] = []  # buckets in turn order

    def cost(self, job: Job) -> float:
        return (2 if job.params.cfg else 1) * math.prod(self.shape(job))

    def admit(self, waiting: Sequence[Job], running: Sequence[Job]) -> list[Job]:
        load: defaultdict[tuple[int, ...], float] = defaultdict(float)
        for job in running:
            load[self.shape(job)] += self.cost(job)
        chosen, held = [], set()
        for job in waiting:
            shape, cost = self.shape(job), self.cost(job)
            if shape in held:
                continue
            if load[shape] == 0.0 or load[shape] + cost <= self.budget:
                load[shape] += cost
                chosen.append(job)
            else:
                held.add(shape)  # (the newer ones of its shape wait behind it)
        return chosen

    def pick(self, running: Sequence[Job]) -> list[Job]:
        groups: dict[Any, list[Job]] = {}
        for job in by_staleness(running):
            groups.setdefault(job.bucket, []).append(job)
        self.ring = [b for b in self.ring if b in groups] + [b for b in groups if b not in self.ring]
        self.deficit = {b: d for b, d in self.deficit.items() if b in groups}
        while self.ring:
            bucket = self.ring.pop(0)
            self.ring.append(bucket)
            self.deficit[bucket] = self.deficit.get(bucket, 0.0) + self.budget
            taken, spent = [], 0.0
            for job in groups[bucket]:
                if spent + self.cost(job) > self.deficit[bucket]:
                    break
                taken.append(job)
                spent += self.cost(job)
            if taken:
                left = len(taken) < len(groups[bucket])
                self.deficit[bucket] = self.deficit[bucket] - spent if left else 0.0
                return taken
        return []
