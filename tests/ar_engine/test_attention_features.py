"""Sliding windows, attention and final logit softcapping, a query scale other than
head_dim ** -0.5 and Llama 3 rope scaling: the paged attention against transformers' own
(eager attention, the implementation whose semantics the others copy)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.masking_utils import sliding_window_causal_mask_function
from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

from omnistage.ar_engine.attention import PrefillSpan, decode_attention, prefill_attention
from omnistage.ar_engine.engine import EngineConfig, EngineRequest, LLMEngine
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.kinds.ar import load_model

NEW = 24
WINDOWS = {"mistral": 12, "gemma2": 8, "gemma3": 8}  # what the tiny checkpoints were built with


@pytest.fixture(scope="module", params=["mistral", "gemma2", "llama3", "qwen3", "qwen3-moe", "gemma3"])
def family(request):
    path = ensure_tiny(request.param)
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    paged = load_model(str(path), torch.float32, "cpu")
    return request.param, tok, ref, paged


def prompts(tok, n=16):
    """Prompts of 20 to 52 tokens (all longer than the windows) sharing their first 12 tokens."""
    prefix = tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    return [prefix + tok(" ".join(["Tell me a story"] * (1 + i % 9)) + f" number {i}")["input_ids"]
            for i in range(n)]


def reference(ref, ids, new=NEW):
    """HF greedy tokens and the log-probability of each (from the model's final logits)."""
    with torch.inference_mode():
        out = ref.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=new, do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, tokens)]
    return tokens, logprobs


def run(engine, batch, logprobs=None):
    """rid -> (tokens, logprobs, cached prompt tokens) of each request, all added at once."""
    for rid, ids in batch:
        engine.add(EngineRequest(rid, ids, SamplingParams(max_tokens=NEW, temperature=0, logprobs=logprobs)))
    got = {}
    while engine.has_work():
        for out in engine.step():
            tokens, lps, _ = got.get(out.rid, ([], [], 0))
            got[out.rid] = (tokens + out.tokens, lps + [s.logprob for s in out.logprobs], out.cached_tokens)
    return got


def test_one_request_equals_hf_generate(family):
    name, tok, ref, paged = family
    ids = prompts(tok)[8]
    assert len(ids) > 2 * WINDOWS.get(name, 0)
    got = run(LLMEngine(paged, tok, EngineConfig(block_size=16, num_blocks=64, max_model_len=1024)), [("one", ids)])
    assert got["one"][0] == reference(ref, ids)[0]


def test_16_requests_chunked_and_prefix_cached_equal_hf_generate(family):
    """Prompts split over steps of 24 tokens, decodes of varied lengths batched together, and
    the shared prefix read from the cache (blocks of 4, so windows start mid-block)."""
    name, tok, ref, paged = family
    engine = LLMEngine(paged, tok, EngineConfig(block_size=4, num_blocks=1024, max_tokens_per_step=24))
    batch = prompts(tok)
    got = run(engine, [(f"r{i}", ids) for i, ids in enumerate(batch)])
    assert sum(cached > 0 for _, _, cached in got.values()) >= 8
    for i, ids in enumerate(batch):
        assert got[f"r{i}"][0] == reference(ref, ids)[0], f"{name} request {i}"


def test_gemma2_logprobs_equal_hf_with_the_final_logit_softcap():
    """Greedy tokens cannot show the final softcap (tanh is monotonic); its logprobs can."""
    path = ensure_tiny("gemma2")
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    assert ref.config.final_logit_softcapping == 5.0
    engine = LLMEngine(load_model(str(path), torch.float32, "cpu"), tok,
                       EngineConfig(block_size=4, num_blocks=512, max_tokens_per_step=32, max_model_len=2048))
    batch = prompts(tok, n=6)
    got = run(engine, [(f"r{i}", ids) for i, ids in enumerate(batch)], logprobs=0)
    for i, ids in enumerate(batch):
        tokens, logprobs = reference(ref, ids)
        assert got[f"r{i}"][0] == tokens
        torch.testing.assert_close(torch.tensor(got[f"r{i}"][1]), torch.tensor(logprobs), rtol=0, atol=2e-4)


def _hf_attention(q, k, v, window, softcap, scale):
    """transformers' eager attention (Gemma 2's, which softcaps) under its own causal or
    sliding-window mask function; q [n, heads, dim] at the last n of k's positions."""
    n, ctx = q.shape[0], k.shape[0]
    q_pos, kv_pos = torch.arange(ctx - n, ctx)[:, None], torch.arange(ctx)[None, :]
    allowed = sliding_window_causal_mask_function(window)(0, 0, q_pos, kv_pos) if window else kv_pos <= q_pos
    mask = torch.zeros(n, ctx).masked_fill(~allowed, float("-inf"))
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = q.shape[1] // k.shape[1], False
    out, _ = eager_attention_forward(module, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                     v.transpose(0, 1)[None], mask[None, None], scaling=scale, softcap=softcap)
    return out[0]  # [n, heads, dim]


@pytest.mark.parametrize("window,softcap", [(None, None), (5, None), (None, 2.0), (5, 2.0), (1, None)])
def test_reference_attention_equals_transformers_eager(window, softcap):
    """Prefill (a chunk after cached positions) and decode, with GQA, over a paged cache."""
    g = torch.Generator().manual_seed(0)
    block_size, ctx, n, heads, kv_heads, dim = 4, 19, 7, 4, 2, 8
    scale = 0.3  # neither dim ** -0.5 nor 1
    table = torch.randperm(8, generator=g)[:-(-ctx // block_size)]
    pos = torch.arange(ctx)
    slots = table[pos // block_size] * block_size + pos % block_size
    k, v, q = (torch.randn(ctx, kv_heads, dim, generator=g) * 3 for _ in range(3))
    q = torch.randn(n, heads, dim, generator=g) * 3
    cache = torch.zeros(2, 8 * block_size, kv_heads, dim)
    cache[0, slots], cache[1, slots] = k, v
    want = _hf_attention(q, k, v, window, softcap, scale)
    span = PrefillSpan(0, n, ctx - n, slots)
    torch.testing.assert_close(prefill_attention(q, cache, span, scale, window, softcap), want)
    tables = table[None].expand(n, -1).to(torch.int32)
    ctx_lens = torch.arange(ctx - n + 1, ctx + 1, dtype=torch.int32)  # each query as a decode row
    got = decode_attention(q, cache, tables, ctx_lens, block_size, scale, window, softcap)
    torch.testing.assert_close(got, want)
