"""Run under TRITON_INTERPRET=1 (set before triton is imported): kernels vs the torch reference."""
import sys

import torch

from omnistage.ar_engine.attention import decode_attention, store_kv
from omnistage.ar_engine.kernels.triton_attention import paged_decode_attention
from omnistage.ar_engine.kernels.triton_attention import store_kv as triton_store_kv

# (sliding window, softcap, factor on head_dim ** -0.5): plain; a window shorter than a block;
# softcap alone; a window across blocks with softcap and Gemma 2's kind of scale
# (query_pre_attn_scalar != head_dim); a window longer than every context, with softcap.
FEATURES = ((None, None, 1.0), (3, None, 1.0), (None, 2.0, 1.0), ("block+3", 3.0, 0.5), (1000, 2.0, 1.0))


def check_store(dtype: torch.dtype, block_size: int, head_dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    num_blocks, kv_heads = 12, 2
    ref = torch.zeros(2, num_blocks * block_size, kv_heads, head_dim, dtype=dtype)
    tri = ref.clone()
    slots = torch.randperm(num_blocks * block_size, generator=g)[:20]
    key = torch.randn(20, kv_heads, head_dim, generator=g).to(dtype)
    value = torch.randn(20, kv_heads, head_dim, generator=g).to(dtype)
    store_kv(ref, key, value, slots)
    triton_store_kv(tri, key, value, slots)
    assert torch.equal(ref, tri), "store_kv differs"


def check_decode(dtype: torch.dtype, block_size: int, head_dim: int, window, softcap, scale_factor) -> None:
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
    want = decode_attention(q.float(), cache.float(), tables, ctx_lens, block_size, scale, window, softcap)
    got = paged_decode_attention(q, cache, tables, ctx_lens, block_size, scale, window, softcap).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    err = (got - want).abs().max().item()
    assert err < tol, (f"decode attention differs by {err} ({dtype}, block {block_size}, dim {head_dim}, "
                       f"window {window}, softcap {softcap}, scale {scale})")


if __name__ == "__main__":
    for dtype in (torch.float32, torch.float16):
        for block_size, head_dim in ((16, 16), (4, 24), (16, 64), (16, 128), (8, 256)):
            check_store(dtype, block_size, head_dim)
            for window, softcap, scale_factor in FEATURES:
                check_decode(dtype, block_size, head_dim, window, softcap, scale_factor)
    print("kernels match the reference")
    sys.exit(0)
