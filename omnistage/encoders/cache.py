"""Encoder cache: media content hash -> embeddings, LRU by bytes.

Owned by one encode engine and used from its thread only (no lock).
"""
from __future__ import annotations

from collections import OrderedDict

import torch


class EncoderCache:
    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, key: str) -> torch.Tensor | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return value

    def peek(self, key: str) -> torch.Tensor | None:
        """Like ``get`` but not counted as a hit or miss (re-checks of queued items)."""
        return self._entries.get(key)

    def put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.capacity or key in self._entries:
            return
        while self.used + size > self.capacity:
            _, old = self._entries.popitem(last=False)
            self.used -= old.numel() * old.element_size()
        self._entries[key] = value
        self.used += size

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"entries": len(self), "bytes": self.used, "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hits / total if total else 0.0}
