"""The engine on tiny real models: token-for-token equal to HF generate (greedy)."""
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from omnistage.ar_engine.engine import EngineConfig, EngineRequest, LLMEngine
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.diffusion.output import _mp4
from omnistage.encoders.media import load_video
from omnistage.graph.options import ArOptions
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.worker.stage import StageRequest
from omnistage.stages.kinds.ar import ArStage, load_model

NEW = 24


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def family(request):
    path = ensure_tiny(request.param)
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path).eval()
    paged = load_model(str(path), torch.float32, "cpu")
    return request.param, tok, ref, paged


def prompts(tok, n=32, shared_prefix=0):
    base = list(range(20, 20 + shared_prefix))
    out = []
    for i in range(n):
        text = " ".join(["Tell me a story"] * (1 + i % 9)) + f" number {i}"
        out.append(base + tok(text)["input_ids"])
    return out


def reference(ref, ids, new=NEW):
    with torch.inference_mode():
        out = ref.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=new, do_sample=False)
    return out[0, len(ids):].tolist()


def run(engine, requests):
    for rid, ids, sampling in requests:
        engine.add(EngineRequest(rid, ids, sampling))
    tokens = {}
    while engine.has_work():
        for out in engine.step():
            tokens.setdefault(out.rid, []).extend(out.tokens)
    return tokens


CONFIGS = {
    "plain": EngineConfig(block_size=16, num_blocks=256),
    "chunked": EngineConfig(block_size=4, num_blocks=1024, max_tokens_per_step=24),
    "preempting": EngineConfig(block_size=4, num_blocks=48, max_tokens_per_step=64, max_model_len=192),
    "no-prefix-cache": EngineConfig(block_size=8, num_blocks=256, prefix_caching=False, max_model_len=2048),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_32_concurrent_requests_equal_hf_generate(family, config):
    name, tok, ref, paged = family
    engine = LLMEngine(paged, tok, CONFIGS[config])
    batch = prompts(tok)
    got = run(engine, [(f"r{i}", ids, SamplingParams(max_tokens=NEW, temperature=0)) for i, ids in enumerate(batch)])
    for i, ids in enumerate(batch):
        assert got[f"r{i}"] == reference(ref, ids), f"{name}/{config} request {i}"
    if config == "preempting":
        assert engine.scheduler.preemptions > 0 and engine.blocks.num_free == 48


def test_each_finished_request_reports_its_queue_prefill_and_decode_time(family):
    """With room for 2 sequences a step, later requests queue; the three phases are ordered
    intervals that together span the request's time in the engine."""
    _, tok, _, paged = family
    engine = LLMEngine(paged, tok, EngineConfig(block_size=16, num_blocks=256), max_seqs=2)
    start = time.perf_counter()
    for i, ids in enumerate(prompts(tok, n=6)):
        engine.add(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)))
    finished = {}
    while engine.has_work():
        for out in engine.step():
            if out.finished:
                finished[out.rid] = (out, time.perf_counter())
            else:
                assert (out.queue_s, out.prefill_s, out.decode_s) == (0.0, 0.0, 0.0)
    for rid, (out, at) in finished.items():
        assert out.queue_s >= 0 and out.prefill_s > 0 and out.decode_s > 0
        assert out.queue_s + out.prefill_s + out.decode_s <= at - start
    assert finished["r5"][0].queue_s > finished["r0"][0].queue_s  # the last waited for two batches


def test_prefix_cache_hits_give_the_same_tokens(family):
    name, tok, ref, paged = family
    engine = LLMEngine(paged, tok, EngineConfig(block_size=8, num_blocks=512))
    batch = prompts(tok, n=8, shared_prefix=64)
    first = run(engine, [("warm", batch[0], SamplingParams(max_tokens=NEW, temperature=0))])
    got = run(engine, [(f"r{i}", ids, SamplingParams(max_tokens=NEW, temperature=0)) for i, ids in enumerate(batch)])
    assert engine.blocks.hits >= 8 * 8
    assert got["r0"] == first["warm"]
    for i, ids in enumerate(batch):
        assert got[f"r{i}"] == reference(ref, ids), f"{name} request {i}"


class OpenAIPenalties(LogitsProcessor):
    """HF generate with OpenAI's logit_bias, then frequency and presence penalties over the
    generated tokens (the order vLLM applies them in)."""

    def __init__(self, prompt_len, presence=0.0, frequency=0.0, bias=None):
        self.prompt_len, self.presence, self.frequency, self.bias = prompt_len, presence, frequency, bias or {}

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for token, amount in self.bias.items():
            scores[0, token] += amount
        counts = torch.bincount(input_ids[0, self.prompt_len:], minlength=scores.shape[-1]).to(scores)
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores)


def test_penalties_and_logit_bias_equal_hf_generate_with_them_in_a_batch(family):
    """presence/frequency penalties and logit_bias, each request its own, batched with plain
    greedy ones: every request equals HF generate with the same adjustments (the plain ones with
    none), and the adjustments change what is generated."""
    name, tok, ref, paged = family
    batch = prompts(tok, 12)
    favored = tok.convert_tokens_to_ids(tok.tokenize(" story")[0])
    settings = [dict(presence_penalty=1.5), dict(frequency_penalty=0.9), dict(frequency_penalty=-0.5, presence_penalty=0.8),
                dict(logit_bias={favored: 4.0, 5: -100.0}), {}]
    reqs = [(f"r{i}", ids, SamplingParams(max_tokens=NEW, temperature=0, **settings[i % len(settings)]))
            for i, ids in enumerate(batch)]
    got = run(LLMEngine(paged, tok, EngineConfig(num_blocks=256)), reqs)
    changed = 0
    for i, ids in enumerate(batch):
        s = settings[i % len(settings)]
        hf = OpenAIPenalties(len(ids), s.get("presence_penalty", 0.0), s.get("frequency_penalty", 0.0), s.get("logit_bias"))
        with torch.inference_mode():
            out = ref.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=NEW, do_sample=False, logits_processor=LogitsProcessorList([hf]))
        assert got[f"r{i}"] == out[0, len(ids):].tolist(), f"{name} request {i} {s}"
        changed += bool(s) and got[f"r{i}"] != reference(ref, ids)
    assert changed >= 6


def test_seeded_sampling_does_not_depend_on_the_batch(family):
    _, tok, _, paged = family
    params = dict(max_tokens=16, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True)
    alone = run(LLMEngine(paged, tok, EngineConfig(num_blocks=128, max_model_len=2048)),
                [("x", prompts(tok)[3], SamplingParams(**params))])
    others = [(f"o{i}", ids, SamplingParams(**dict(params, seed=i))) for i, ids in enumerate(prompts(tok, 8))]
    crowd = run(LLMEngine(paged, tok, EngineConfig(num_blocks=128, max_tokens_per_step=32, max_model_len=2048)),
                others[:4] + [("x", prompts(tok)[3], SamplingParams(**params))] + others[4:])
    assert crowd["x"] == alone["x"] and len(alone["x"]) == 16


def test_hidden_states_match_the_reference_model(family):
    _, tok, ref, paged = family
    ids = prompts(tok)[5]
    engine = LLMEngine(paged, tok, EngineConfig(num_blocks=64, hidden_states="generated", max_model_len=1024))
    engine.add(EngineRequest("h", ids, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)))
    tokens, hidden = [], []
    while engine.has_work():
        for out in engine.step():
            tokens += out.tokens
            hidden.append(out.hidden)
    full = torch.tensor([ids + tokens[:-1]])
    with torch.inference_mode():
        want = ref.model(full).last_hidden_state[0, len(ids) - 1:]
    torch.testing.assert_close(torch.cat(hidden), want, rtol=1e-4, atol=1e-4)


def test_hidden_states_all_with_prefix_caching_computes_only_the_requests_that_want_them(family):
    _, tok, ref, paged = family
    ids = prompts(tok)[5]
    engine = LLMEngine(paged, tok, EngineConfig(num_blocks=64, block_size=4, hidden_states="all", max_model_len=256))

    def run(rid, all_states):
        engine.add(EngineRequest(rid, ids, SamplingParams(max_tokens=3, temperature=0, ignore_eos=True),
                                 all_states=all_states))
        outs = [o for _ in range(20) if engine.has_work() for o in engine.step()]
        hidden = [o.hidden for o in outs if o.hidden is not None]
        return outs[-1], torch.cat(hidden) if hidden else None
    _, first = run("a", True)
    cached_out, none = run("b", False)  # same prompt: starts from the cache, keeps no states
    assert cached_out.cached_tokens > 0 and none is None
    again, states = run("c", True)  # wants states: computes its whole prompt despite the cache
    assert again.cached_tokens == 0
    torch.testing.assert_close(states, first)
    with torch.inference_mode():
        want = ref.model(torch.tensor([ids])).last_hidden_state[0]
    torch.testing.assert_close(states[:len(ids)], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["qwen2-vl", "qwen2.5-vl"])
def test_vision_language_with_images_and_video_equals_hf_generate(vl_reference, name):
    """All requests in one batch, prompts chunked over steps; Qwen2.5-VL's 224x112 image spans
    several vision windows. The video is an MP4 at 1 frame per second, so that its temporal
    patches span 2 s (Qwen2.5-VL's positions count seconds), not the 1 s of frames given as a list."""
    path = ensure_tiny(name)
    tok, processor = AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    stage = ArStage(load_model(str(path), torch.float32, "cpu"), tok, ArOptions(block_size=4, max_tokens_per_step=40),
                    8, processor)
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())
              for h, w in [(56, 56), (84, 112), (224, 112), (56, 84), (56, 84), (56, 84)]]
    image, text = {"type": "image"}, lambda s: {"type": "text", "text": s}
    cases = {
        "one": ([image, text("Describe the image.")], [images[0]], None),
        "text-only": ("Hello there, no image", [], None),
        "two": ([image, text("and"), image, text("compare")], [images[1], images[2]], None),
        "repeat": ([text("Same image again"), image], [images[0]], None),
        "video": ([text("Watch"), {"type": "video"}, text("what happens?")], [], None),
    }
    mp4 = _mp4(np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images[3:]]), fps=1)
    clip = load_video(mp4)
    for rid, (content, imgs, _) in cases.items():
        inputs = {"messages": [{"role": "user", "content": content}], "images": imgs}
        if rid == "video":
            inputs["video"] = mp4
        stage.add(StageRequest(rid, inputs, {"temperature": 0, "max_tokens": 16}))
    got = {}
    while stage.has_work():
        for out in stage.step():
            got.setdefault(out.rid, []).extend(out.ports["tokens"])
    assert clip.fps == 1
    for rid, (content, imgs, _) in cases.items():
        frames = clip.frames if rid == "video" else None
        assert got[rid] == vl_reference(content, imgs, frames, new=16, name=name, fps=clip.fps)[0], rid


def test_a_model_without_the_paged_attention_is_refused(family):
    """With its own attention a model would attend over each step's tokens only: wrong tokens."""
    _, tok, ref, _ = family
    with pytest.raises(ValueError, match="the engine needs 'omnistage_paged'"):
        LLMEngine(ref, tok, EngineConfig(num_blocks=64))
