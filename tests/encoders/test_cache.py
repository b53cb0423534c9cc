import torch

from omnistage.encoders.cache import EncoderCache


def test_lru_by_bytes_with_hit_and_miss_counts():
    cache = EncoderCache(capacity_bytes=3 * 400)
    for key in "abc":
        cache.put(key, torch.zeros(100))  # 400 bytes each
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", torch.zeros(100))  # evicts b, the least recent
    assert cache.get("b") is None and cache.get("c") is not None and cache.get("d") is not None
    assert cache.used == 1200 and len(cache) == 3
    cache.put("huge", torch.zeros(1000))  # larger than the whole cache: not stored
    assert cache.get("huge") is None
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 2
