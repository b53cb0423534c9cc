"""The compiled CPU attention kernel against the torch reference, on a poisoned paged cache."""
import pytest
import torch

from omnistage.ar_engine.attention import PrefillSpan, decode_attention, prefill_attention
from omnistage.ar_engine.kernels import backend_for
from omnistage.ar_engine.kernels.cpu_attention import cpu_backend

# (sliding window, softcap, factor on head_dim ** -0.5), as the Triton kernel's check.
FEATURES = [(None, None, 1.0), (3, None, 1.0), (None, 2.0, 1.0), ("block+3", 3.0, 0.5), (1000, 2.0, 1.0)]
# relative to the largest output: the kernel rounds its float32 result to the cache's dtype
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


@pytest.fixture(scope="module")
def backend():
    found = cpu_backend()
    assert found is not None, "the CPU attention kernel did not build (the log says why)"
    return found


def test_cpu_devices_get_the_compiled_backend(backend):
    assert type(backend_for("cpu")) is type(backend)


def _case(dtype, block_size, head_dim, g):
    """A mixed step: two decode rows and two prefill chunks (one continuing a cached prefix), over
    shuffled block tables; every cache slot no row may read holds NaN."""
    num_blocks, kv_heads, heads = 16, 2, 4
    # (first position computed this step, tokens this step)
    chunks = [(0, 1), (2 * block_size + 2, 1), (0, 2 * block_size + 1), (block_size + 1, block_size + 3)]
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:4] for _ in chunks]).to(torch.int32)
    cache = torch.full((2, num_blocks * block_size, kv_heads, head_dim), float("nan"))
    for row, (start, n) in enumerate(chunks):
        pos = torch.arange(start + n)
        slots = tables[row, pos // block_size].long() * block_size + pos % block_size
        cache[:, slots] = torch.randn(2, len(pos), kv_heads, head_dim, generator=g) * 2
    cache = cache.to(dtype)
    lens = torch.tensor([n for _, n in chunks])
    rows = torch.repeat_interleave(torch.arange(len(chunks)), lens)
    pos = torch.cat([torch.arange(s, s + n) for s, n in chunks])
    q = (torch.randn(len(pos), heads, head_dim, generator=g) * 2).to(dtype)
    return chunks, tables, cache, rows.to(torch.int32), (pos + 1).to(torch.int32), q


def _reference(chunks, tables, cache, q, block_size, scale, window, softcap):
    out, offset = [], 0
    # (the reference gathers whole blocks, so it reads the poison too, weighted by zero: clean it)
    cache, q = cache.float().nan_to_num(0.0), q.float()
    for row, (start, n) in enumerate(chunks):
        part = q[offset:offset + n]
        if n == 1:
            out.append(decode_attention(part, cache, tables[row:row + 1], torch.tensor([start + 1], dtype=torch.int32),
                                        block_size, scale, window, softcap))
        else:
            ctx = torch.arange(start + n)
            span = PrefillSpan(0, n, start, tables[row, ctx // block_size].long() * block_size + ctx % block_size)
            out.append(prefill_attention(part, cache, span, scale, window, softcap))
        offset += n
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size,head_dim", [(16, 64), (4, 24), (16, 128), (8, 16)])
def test_packed_attention_equals_the_reference(backend, dtype, block_size, head_dim):
    g = torch.Generator().manual_seed(0)
    for window, softcap, factor in FEATURES:
        window = block_size + 3 if window == "block+3" else window
        chunks, tables, cache, rows, ctx, q = _case(dtype, block_size, head_dim, g)
        scale = head_dim ** -0.5 * factor
        want = _reference(chunks, tables, cache, q, block_size, scale, window, softcap)
        got = backend.packed_attention(q, cache, tables, rows, ctx, block_size, scale, window, softcap).float()
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < TOLERANCE[dtype], f"differs by {err} (window {window}, softcap {softcap}, scale {scale})"


def test_decode_signature_reads_row_i_of_the_tables(backend):
    g = torch.Generator().manual_seed(1)
    cache = torch.randn(2, 8 * 16, 2, 64, generator=g)
    tables = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(3)]).to(torch.int32)
    lens = torch.tensor([5, 17, 40], dtype=torch.int32)
    q = torch.randn(3, 4, 64, generator=g)
    want = decode_attention(q, cache, tables, lens, 16, 0.125)
    assert torch.allclose(backend.decode_attention(q, cache, tables, lens, 16, 0.125), want, atol=1e-5)


def test_sdpa_takes_long_chunks_of_large_heads_only():
    from omnistage.ar_engine.runner import attends_by_sdpa
    from omnistage.ar_engine.sequence import Chunk
    assert [attends_by_sdpa(Chunk(None, 0, n), 64) for n in (31, 182, 100, 400)] == [False, True, False, True]
    assert attends_by_sdpa(Chunk(None, 1600, 40), 128) and not attends_by_sdpa(Chunk(None, 1600, 17), 64)
    assert not attends_by_sdpa(Chunk(None, 0, 1600), 16)


def test_engine_with_long_and_short_prompts_equals_the_reference_backend(backend, monkeypatch):
    """Long prefill chunks go through SDPA, the other tokens through the kernel, in one step; so
    does a short chunk after a long cached prefix. (The tiny model's heads of 16 would all go to
    the kernel: the thresholds are lowered to mix both here.)"""
    from omnistage.ar_engine import runner
    from omnistage.ar_engine.config import EngineConfig
    from omnistage.ar_engine.engine import EngineRequest, LLMEngine
    from omnistage.ar_engine.runner import attends_by_sdpa
    from omnistage.ar_engine.sampling import SamplingParams
    from omnistage.ar_engine.sequence import Chunk
    from omnistage.models.tiny import ensure_tiny
    from omnistage.stages.kinds.ar import load_model
    path = ensure_tiny("qwen2")
    prefix = list(range(5, 405))
    waves = [[list(range(5, 5 + n)) for n in (3, 154, 20, 135)], [prefix], [prefix + [7] * 12, prefix[:30] + [9] * 3]]
    monkeypatch.setattr(runner, "SDPA_MIN_HEAD_DIM", 16)
    monkeypatch.setattr(runner, "SDPA_ROWS", 8)
    monkeypatch.setattr(runner, "SDPA_PAIRS", 4096)
    assert [attends_by_sdpa(Chunk(None, 0, n), 16) for n in (3, 154, 20, 135)] == [False, True, False, True]
    assert attends_by_sdpa(Chunk(None, 400, 12), 16) and not attends_by_sdpa(Chunk(None, 400, 3), 16)

    def run(which):
        engine = LLMEngine(load_model(str(path), torch.float32, "cpu"), None, EngineConfig(num_blocks=128, max_model_len=512),
                           backend=which, eos_ids=frozenset())
        out = {}
        for w, wave in enumerate(waves):
            for i, ids in enumerate(wave):
                engine.add(EngineRequest(f"r{w}.{i}", ids, SamplingParams(max_tokens=6, temperature=0)))
            while engine.has_work():
                for step in engine.step():
                    out.setdefault(step.rid, []).extend(step.tokens)
        assert engine.blocks.hits >= len(prefix) // engine.blocks.block_size  # the third wave reused the prefix
        return out

    assert run(backend) == run(None)
