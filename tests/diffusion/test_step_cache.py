"""Step caching inside step batches: off (or threshold 0) changes nothing; on, skipped steps grow
with the threshold while the image stays within the documented PSNR bound of the uncached one,
alone and beside requests with other thresholds; skipped rows really leave the model call."""
import numpy as np
import pytest
import torch

from omnistage.diffusion.params import CacheSpec, parse_params
from omnistage.diffusion.step_cache import StepCache
from omnistage.errors import RequestRejected

PSNR_BOUND_DB = 30.0  # docs/diffusion.md: the tiny models stay far above it at every threshold tried
STEPS = 30


def psnr(a, b):
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)  # (pixels in [0, 1])


def generate(h, requests):
    """requests: rid -> (seed, cache or None); returns rid -> (pixels, skipped steps)."""
    for rid, (seed, cache) in requests.items():
        params = {"seed": seed, "num_inference_steps": STEPS} | ({"cache": cache} if cache else {})
        h.add(rid, f"a photo of thing {seed}", **params)
    latents, skipped = {}, {}
    while h.engine.has_work():
        for f in h.engine.step():
            latents[f.rid], skipped[f.rid] = f.latents, f.skipped
    pixels = h.pixels(latents)
    return {rid: (pixels[rid], skipped[rid]) for rid in requests}


def reuse(threshold):
    return {"policy": "reuse", "threshold": threshold}


@pytest.mark.parametrize("name", ["sd", "sd3"])
def test_skipped_steps_grow_with_the_threshold_and_the_image_stays_close(harness, name):
    h = harness(name)
    plain = generate(h, {"r": (3, None)})["r"]
    assert plain[1] == 0
    zero = generate(h, {"r": (3, reuse(0.0))})["r"]
    assert zero[1] == 0 and np.array_equal(np.asarray(zero[0]), np.asarray(plain[0]))  # threshold 0 skips nothing
    runs = [generate(h, {"r": (3, reuse(t))})["r"] for t in (0.05, 0.2, 0.5)]
    skipped = [s for _, s in runs]
    assert skipped == sorted(skipped) and skipped[0] < skipped[-1] and skipped[-1] <= STEPS - 3
    assert min(psnr(px, plain[0]) for px, _ in runs) >= PSNR_BOUND_DB


def test_in_a_batch_each_request_keeps_its_own_threshold(harness):
    h = harness("sd")
    alone = {t: generate(h, {"a": (5, reuse(t))})["a"] for t in (0.05, 0.5)}
    plain = generate(h, {"a": (5, None)})["a"]
    mixed = generate(h, {"lo": (5, reuse(0.05)), "off": (5, None), "hi": (5, reuse(0.5)), "other": (6, reuse(0.2))})
    assert mixed["lo"][1] == alone[0.05][1] and mixed["hi"][1] == alone[0.5][1] and mixed["off"][1] == 0
    assert np.allclose(np.asarray(mixed["off"][0]), np.asarray(plain[0]), atol=1e-4)
    for rid, t in (("lo", 0.05), ("hi", 0.5)):
        assert np.allclose(np.asarray(mixed[rid][0]), np.asarray(alone[t][0]), atol=1e-4)
        assert psnr(mixed[rid][0], plain[0]) >= PSNR_BOUND_DB


def test_skipping_rows_leave_the_model_call(harness, monkeypatch):
    h = harness("sd")
    rows = []
    denoise = h.family.denoise

    def counted(x, t, cond):
        rows.append(len(x))
        return denoise(x, t, cond)
    monkeypatch.setattr(h.family, "denoise", counted)
    out = generate(h, {"a": (1, reuse(0.5)), "b": (2, None)})  # (guidance > 1: two rows a step each)
    assert sum(rows) == 2 * (STEPS - out["a"][1]) + 2 * STEPS and out["a"][1] > 0


def test_a_cache_computes_the_warm_up_the_last_step_and_after_max_skips():
    cache = StepCache(CacheSpec("reuse", threshold=1.0, warmup=2, max_skips=2))
    decisions = []
    for i in range(10):
        skip = cache.skip(i, 10)
        decisions.append(skip)
        if not skip:
            cache.computed(i, torch.full((1, 4), 1.0 + 0.01 * i))
    assert decisions == [False, False, True, True, False, True, True, False, True, False]
    assert cache.skipped == 5
    tight = StepCache(CacheSpec("reuse", threshold=0.015))  # one step's change (~0.01) fits, two do not
    for i in range(5):
        if not tight.skip(i, 5):
            tight.computed(i, torch.full((1, 4), 1.0 + 0.01 * i))
    assert tight.skipped == 1


def test_cache_parameters_default_to_the_stages_and_are_checked(harness):
    info = {**harness("sd").info, "cache": {"policy": "reuse", "threshold": 0.2}}
    assert parse_params(info, {}).cache == CacheSpec("reuse", 0.2)
    assert parse_params(info, {"cache": {"threshold": 0.4}}).cache == CacheSpec("reuse", 0.4)
    assert parse_params(info, {"cache": {"policy": "off"}}).cache.policy == "off"
    off = {**info, "cache": {"policy": "off", "threshold": 0.2}}
    assert parse_params(off, {"cache": {"threshold": 0.3}}).cache == CacheSpec("reuse", 0.3)  # (asking is enabling)
    for bad, param in (({"treshold": 0.1}, "cache"), ({"policy": "teacache"}, "cache.policy"), ({"policy": ""}, "cache.policy"),
                       ({"threshold": -1}, "cache.threshold"), ("on", "cache")):
        with pytest.raises(RequestRejected) as err:
            parse_params(info, {"cache": bad})
        assert err.value.param == param
