"""Run under TRITON_INTERPRET=1 (set before triton is imported): kernels vs the torch reference."""
import sys

import torch

from omnistage.ar_engine.attention import decode_attention, store_kv
from omnistage.ar_engine.kernels.triton_attention import packed_attention, paged_decode_attention
from omnistage.ar_engine.kernels.triton_attention import store_kv as triton_store_kv

# (sliding window, softcap, factor on head_dim ** -0.5): plain; a window shorter than a block;
# softcap alone; a window across blocks with softcap and Gemma 2's kind of scale
# (query_pre_attn_scalar != head_dim); a window longer than every context, with softcap.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}  # (8 mantissa bits)
FEATURES = ((None, None, 1.0), (3, None, 1.0), (None, 2.0, 1.0), ("block+3", 3.0, 0.5), (1000, 2.0, 1.0))


def check_store(dtype: torch.dtype, block_size: int, head_dim: int, device: str = "cpu") -> None:
    g = torch.Generator().manual_seed(0)
    num_blocks, kv_heads = 12, 2
    ref = torch.zeros(2, num_blocks * block_size, kv_heads, head_dim, dtype=dtype)
    tri = ref.clone()
    slots = torch.randperm(num_blocks * block_size, generator=g)[:20]
    key = torch.randn(20, kv_heads, head_dim, generator=g).to(dtype)
    value = torch.randn(20, kv_heads, head_dim, generator=g).to(dtype)
    ref, tri, key, value, slots = (t.to(device) for t in (ref, tri, key, value, slots))
    store_kv(ref, key, value, slots)
    triton_store_kv(tri, key, value, slots)
    assert torch.equal(ref, tri), "store_kv differs"


def check_decode(dtype: torch.dtype, block_size: int, head_dim: int, window, softcap, scale_factor,
                 device: str = "cpu") -> None:
    g = torch.Generator().manual_seed(0)
    num_blocks, kv_heads, heads = 12, 2, 4  # GQA: two query heads per kv head
    window = block_size + 3 if window == "block+3" else window
    cache = (torch.randn(2, num_blocks * block_size, kv_heads, head_dim, generator=g) * 2).to(dtype)
    # ragged: one position, one whole block, partial blocks, the whole table but one position
    ctx_lens = torch.tensor([1, block_size, 2 * block_size + 3, 5 * block_size - 1, 6 * block_size - 2],
                            dtype=torch.int32)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:6] for _ in ctx_lens]).to(torch.int32)
    q = (torch.randn(len(ctx_lens), heads, head_dim, generator=g) * 2).to(dtype)
    scale = head_dim ** -0.5 * scale_factor
    q, cache, tables, ctx_lens = (t.to(device) for t in (q, cache, tables, ctx_lens))
    want = decode_attention(q.float(), cache.float(), tables, ctx_lens, block_size, scale, window, softcap)
    got = paged_decode_attention(q, cache, tables, ctx_lens, block_size, scale, window, softcap).float()
    tol = TOLERANCE[dtype]
    err = (got - want).abs().max().item()
    assert err < tol, (f"decode attention differs by {err} ({dtype}, block {block_size}, dim {head_dim}, "
                       f"window {window}, softcap {softcap}, scale {scale})")


def check_packed(dtype: torch.dtype, block_size: int, head_dim: int, window, softcap, scale_factor,
                 device: str = "cpu") -> None:
    """A packed step as the runner builds it: a prefill chunk after a cached prefix, a decode row, a
    fresh prompt longer than a tile, another decode row; each row equals the reference decode of
    that row over its sequence's blocks up to its own position."""
    g = torch.Generator().manual_seed(1)
    kv_heads, heads = 2, 4
    window = block_size + 3 if window == "block+3" else window
    chunks = ((2 * block_size + 5, 37), (3 * block_size - 1, 1), (0, 21), (block_size, 1))  # (cached, new)
    width = max(-(-(start + n) // block_size) for start, n in chunks)
    num_blocks = len(chunks) * width + 3
    cache = (torch.randn(2, num_blocks * block_size, kv_heads, head_dim, generator=g) * 2).to(dtype)
    tables = torch.randperm(num_blocks, generator=g)[:len(chunks) * width].view(len(chunks), width).to(torch.int32)
    rows = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, (_, n) in enumerate(chunks)])
    ctx_lens = torch.cat([torch.arange(start + 1, start + n + 1, dtype=torch.int32) for start, n in chunks])
    q = (torch.randn(len(rows), heads, head_dim, generator=g) * 2).to(dtype)
    scale = head_dim ** -0.5 * scale_factor
    q, cache, tables, rows, ctx_lens = (t.to(device) for t in (q, cache, tables, rows, ctx_lens))
    want = decode_attention(q.float(), cache.float(), tables[rows.long()], ctx_lens, block_size, scale, window, softcap)
    got = packed_attention(q, cache, tables, rows, ctx_lens, block_size, scale, window, softcap).float()
    err = (got - want).abs().max().item()
    assert err < TOLERANCE[dtype] * 2, (f"packed attention differs by {err} ({dtype}, block {block_size}, dim "
                                        f"{head_dim}, window {window}, softcap {softcap})")
    decodes = torch.tensor([0, 37], device=device)  # a step of one row per sequence: tiles of one row
    one = packed_attention(q[decodes], cache, tables[:2], torch.tensor([0, 1], dtype=torch.int32, device=device),
                           ctx_lens[decodes], block_size, scale, window, softcap).float()
    assert (one - want[decodes]).abs().max().item() < TOLERANCE[dtype] * 2, "packed decode-only step differs"


def check_engine(device: str = "cpu") -> None:
    """The engine on the Triton backend (a step's prefill chunks and decodes in one launch per
    layer, chunked prefill mixing them) gives HF generate's greedy tokens on the tiny Qwen2."""
    from transformers import AutoModelForCausalLM

    from omnistage.ar_engine.config import EngineConfig
    from omnistage.ar_engine.engine import EngineRequest, LLMEngine
    from omnistage.ar_engine.kernels.triton_attention import TritonBackend
    from omnistage.ar_engine.sampling import SamplingParams
    from omnistage.models.tiny import ensure_tiny
    from omnistage.stages.kinds.ar_model import load_model
    path = str(ensure_tiny("qwen2"))
    prompts = [list(range(5, 5 + n)) for n in (3, 40, 17)]
    engine = LLMEngine(load_model(path, torch.float32, device), None,
                       EngineConfig(block_size=16, num_blocks=32, max_tokens_per_step=24, max_model_len=256), max_seqs=3,
                       backend=TritonBackend())
    for i, ids in enumerate(prompts):
        engine.add(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)))
    got: dict[str, list[int]] = {}
    while engine.has_work():
        for out in engine.step():
            got.setdefault(out.rid, []).extend(out.tokens)
    ref = AutoModelForCausalLM.from_pretrained(path).to(device)
    for i, ids in enumerate(prompts):
        want = ref.generate(torch.tensor([ids], device=device), max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert got[f"r{i}"] == want[0, len(ids):].tolist(), f"engine on the Triton backend differs for prompt {i}"


SHAPES = ((16, 16), (4, 24), (16, 64), (16, 128), (8, 256))  # (block_size, head_dim)


def check_all(dtypes: tuple[torch.dtype, ...], device: str = "cpu") -> None:
    for dtype in dtypes:
        for block_size, head_dim in SHAPES:
            check_store(dtype, block_size, head_dim, device)
            for window, softcap, scale_factor in FEATURES:
                check_decode(dtype, block_size, head_dim, window, softcap, scale_factor, device)
                check_packed(dtype, block_size, head_dim, window, softcap, scale_factor, device)


if __name__ == "__main__":
    check_all((torch.float32, torch.float16))
    check_engine()
    print("kernels match the reference")
    sys.exit(0)
