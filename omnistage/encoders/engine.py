"""The encode engine: batches media items across requests through one encoder tower.

Each step encodes up to ``max_items`` items (and ``max_patches`` patches) packed into one
forward; a request's output (one entry per item, in its order) leaves once all its items are
done. Items whose content hash is in the encoder cache skip the tower.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from omnistage.encoders.cache import EncoderCache


@dataclass
class _Pending:
    rid: str
    items: list[Any]  # objects with .hash and whatever the tower needs
    embeds: list[torch.Tensor | None] = field(default_factory=list)

    def done(self) -> bool:
        return all(e is not None for e in self.embeds)


class EncodeEngine:
    def __init__(self, encode: Callable[[list[Any]], list[torch.Tensor]], cache: EncoderCache,
                 max_items: int = 16, max_patches: int = 1 << 16,
                 patches: Callable[[Any], int] = lambda item: 1) -> None:
        self._encode = encode
        self.cache = cache
        self.max_items = max_items
        self.max_patches = max_patches
        self._patches = patches
        self.requests: dict[str, _Pending] = {}
        self.queue: deque[tuple[str, int]] = deque()  # (rid, item index) still to encode

    def add(self, rid: str, items: list[Any]) -> None:
        pending = _Pending(rid, items, [None] * len(items))
        self.requests[rid] = pending
        for i, item in enumerate(items):
            hit = self.cache.get(item.hash)
            if hit is not None:
                pending.embeds[i] = hit
            else:
                self.queue.append((rid, i))

    def abort(self, rid: str) -> None:
        self.requests.pop(rid, None)
        self.queue = deque(q for q in self.queue if q[0] != rid)

    def has_work(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[tuple[str, list[Any], list[torch.Tensor]]]:
        """Encode one batch; returns (rid, items, embeds) for requests now complete."""
        batch: list[tuple[str, int]] = []
        patches = 0
        while self.queue and len(batch) < self.max_items:
            rid, i = self.queue[0]
            item = self.requests[rid].items[i]
            cached = self.cache.peek(item.hash)
            if cached is not None:  # encoded for another request since this one was queued
                self.requests[rid].embeds[i] = cached
                self.queue.popleft()
                continue
            size = self._patches(item)
            if batch and patches + size > self.max_patches:
                break
            batch.append(self.queue.popleft())
            patches += size
        self._run(batch)
        done = [p for p in self.requests.values() if p.done()]
        for pending in done:
            del self.requests[pending.rid]
        return [(p.rid, p.items, p.embeds) for p in done]  # type: ignore[misc]

    def _run(self, batch: list[tuple[str, int]]) -> None:
        if not batch:
            return
        # The same item may be queued twice (two requests, one image): encode it once.
        unique: dict[str, Any] = {}
        for rid, i in batch:
            item = self.requests[rid].items[i]
            unique.setdefault(item.hash, item)
        results = dict(zip(unique, self._encode(list(unique.values()))))
        for key, value in results.items():
            self.cache.put(key, value)
        for rid, i in batch:
            self.requests[rid].embeds[i] = results[self.requests[rid].items[i].hash]
