import torch

from omnistage.diffusion.text import PromptCache, PromptEncoder, TextEncodeEngine, TextJob


def fake_encoder(calls):
    """Stands in for a text encoder in these cache tests: one row per string, recorded."""
    def encode(texts):
        calls.append(list(texts))
        return [{"embeds": torch.full((4, 2), float(len(t)))} for t in texts]
    return encode


def test_cache_is_lru_bounded_in_bytes():
    cache = PromptCache(capacity_bytes=2 * 32)  # two 4x2 float32 entries
    for text in ("a", "b"):
        cache.put(text, {"embeds": torch.zeros(4, 2)})
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", {"embeds": torch.zeros(4, 2)})
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 64


def test_encoder_batches_missing_and_dedupes():
    calls = []
    enc = PromptEncoder(fake_encoder(calls), PromptCache(1 << 20), max_batch=2)
    out = enc.encode(["aa", "b", "aa", "ccc"])
    assert calls == [["aa", "b"], ["ccc"]]
    assert [float(o["embeds"][0, 0]) for o in out] == [2.0, 1.0, 2.0, 3.0]
    enc.encode(["b", "ccc"])
    assert len(calls) == 2 and enc.cache.hit_rate() > 0


def test_text_engine_adds_negatives_only_for_guided_requests():
    calls = []
    engine = TextEncodeEngine(PromptEncoder(fake_encoder(calls), PromptCache(1 << 20), 8), max_requests=8)
    engine.add(TextJob("g", "guided", "blurry"))
    engine.add(TextJob("u", "plain", None))
    out = {rid: (cond, uncond) for rid, cond, uncond in engine.step()}
    assert calls == [["guided", "plain", "blurry"]]
    assert float(out["g"][1]["embeds"][0, 0]) == 6.0 and out["u"][1] is None
    assert not engine.has_work()
