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
- ``MeasuredWidth`` (the default): each latent shape's step width, in rows, measured on this
  machine the first time the shape runs (``widths.py``: the narrowest width near the best
  rows/s, within the memory measured). A shape not measured yet admits one request, whose
  embeddings the probe uses. Each step serves the bucket of the request that has waited
  longest since it last advanced, up to its shape's width; admission per shape is oldest first
  up to one width of running rows, with the same hold-back as above.
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


def rows(job: Job) -> int:
    return 2 if job.params.cfg else 1


def oldest_first(waiting: Sequence[Job], running: Sequence[Job], shape: Callable[[Job], Any],
                 cost: Callable[[Job], float], limit: Callable[[Any], float]) -> list[Job]:
    """The waiting requests to start, oldest first, while each shape's running cost stays within
    its ``limit`` (a shape with none running takes one whatever its cost). A request that does
    not fit holds back the newer ones of its shape."""
    load: defaultdict[Any, float] = defaultdict(float)
    for job in running:
        load[shape(job)] += cost(job)
    chosen, held = [], set()
    for job in waiting:
        key = shape(job)
        if key in held:
            continue
        if load[key] == 0.0 or load[key] + cost(job) <= limit(key):
            load[key] += cost(job)
            chosen.append(job)
        else:
            held.add(key)  # (the newer ones of its shape wait behind it)
    return chosen


class MeasuredWidth:
    def __init__(self, probe: Callable[[Job], int], shape: Callable[[Job], tuple[int, ...]]) -> None:
        """``probe(job)``: the width for ``job``'s latent shape, measured with its embeddings."""
        self.probe, self.shape = probe, shape
        self.widths: dict[tuple[int, ...], int] = {}

    def admit(self, waiting: Sequence[Job], running: Sequence[Job]) -> list[Job]:
        return oldest_first(waiting, running, self.shape, rows, lambda shape: self.widths.get(shape, 0))

    def pick(self, running: Sequence[Job]) -> list[Job]:
        if not running:
            return []
        ranked = by_staleness(running)
        bucket = [j for j in ranked if j.bucket == ranked[0].bucket]
        shape = self.shape(bucket[0])
        if shape not in self.widths:
            self.widths[shape] = self.probe(bucket[0])
        taken, width = [], 0
        for job in bucket:
            if taken and width + rows(job) > self.widths[shape]:
                break
            taken.append(job)
            width += rows(job)
        return taken


class ComputeBudget:
    def __init__(self, budget: float, shape: Callable[[Job], tuple[int, ...]]) -> None:
        self.budget, self.shape = budget, shape
        self.deficit: dict[Any, float] = {}
        self.ring: list[Any] = []  # buckets in turn order

    def cost(self, job: Job) -> float:
        return rows(job) * math.prod(self.shape(job))

    def admit(self, waiting: Sequence[Job], running: Sequence[Job]) -> list[Job]:
        return oldest_first(waiting, running, self.shape, self.cost, lambda shape: self.budget)

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
