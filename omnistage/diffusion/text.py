"""Batched prompt encoding with a prompt-embedding cache.

Prompts (and negative prompts) are encoded one string per row, so a string's embedding does not
depend on what it was batched with and can be cached on its own. The cache is LRU, bounded in
bytes; it holds tensors on the stage's device and is only touched by the engine's thread.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

Embeds = dict[str, torch.Tensor]


def _nbytes(embeds: Embeds) -> int:
    return sum(t.numel() * t.element_size() for t in embeds.values())


class PromptCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[str, Embeds] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, text: str) -> Embeds | None:
        found = self._items.get(text)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(text)
        return found

    def put(self, text: str, embeds: Embeds) -> None:
        size = _nbytes(embeds)
        if size > self.capacity or text in self._items:
            return
        while self.bytes + size > self.capacity:
            _, old = self._items.popitem(last=False)
            self.bytes -= _nbytes(old)
        self._items[text] = embeds
        self.bytes += size

    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class PromptEncoder:
    """``encode(texts)`` -> one Embeds per text: cached ones looked up, the rest run together."""

    def __init__(self, encode_batch: Callable[[list[str]], list[Embeds]], cache: PromptCache, max_batch: int) -> None:
        self._encode_batch = encode_batch
        self.cache = cache
        self.max_batch = max_batch

    def encode(self, texts: list[str]) -> list[Embeds]:
        found = {t: e for t in dict.fromkeys(texts) if (e := self.cache.get(t)) is not None}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        for start in range(0, len(missing), self.max_batch):
            chunk = missing[start:start + self.max_batch]
            for text, embeds in zip(chunk, self._encode_batch(chunk)):
                # Clone: a row of a batch output keeps the whole batch's storage alive.
                embeds = {k: v.clone() for k, v in embeds.items()}
                found[text] = embeds
                self.cache.put(text, embeds)
        return [found[t] for t in texts]


@dataclass
class TextJob:
    rid: str
    prompt: str
    negative: str | None  # None: no classifier-free guidance, no negative embedding


class TextEncodeEngine:
    """The ``text_encode`` stage's engine: batches the prompts of waiting requests each step."""

    def __init__(self, encoder: PromptEncoder, max_requests: int) -> None:
        self.encoder = encoder
        self.max_requests = max_requests
        self.queue: deque[TextJob] = deque()

    def add(self, job: TextJob) -> None:
        self.queue.append(job)

    def step(self) -> list[tuple[str, Embeds, Embeds | None]]:
        jobs = [self.queue.popleft() for _ in range(min(self.max_requests, len(self.queue)))]
        texts = [j.prompt for j in jobs] + [j.negative for j in jobs if j.negative is not None]
        embeds = iter(self.encoder.encode(texts))
        conds = [next(embeds) for _ in jobs]
        return [(j.rid, c, next(embeds) if j.negative is not None else None) for j, c in zip(jobs, conds)]

    def abort(self, rid: str) -> None:
        self.queue = deque(j for j in self.queue if j.rid != rid)

    def has_work(self) -> bool:
        return bool(self.queue)
