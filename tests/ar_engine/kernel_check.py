"""Run under TRITON_INTERPRET=1 (set before triton is imported): kernels vs the torch reference."""
import sys

import torch

from omnistage.ar_engine.attention import decode_attention, store_kv
from omnistage.ar_engine.kernels.triton_attention import paged_decode_attention
from omnistage.ar_engine.kernels.triton_attention import store_kv as triton_store_kv


def check(dtype: torch.dtype, block_size: int, head_dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    num_blocks, kv_heads, heads = 12, 2, 4
    ref = torch.zeros(2, num_blocks * block_size, kv_heads, head_dim, dtype=dtype)
    tri = ref.clone()
    slots = torch.randperm(num_blocks * block_size, generator=g)[:20]
    key = torch.randn(20, kv_heads, head_dim, generator=g).to(dtype)
    value = torch.randn(20, kv_heads, head_dim, generator=g).to(dtype)
    store_kv(ref, key, value, slots)
    triton_store_kv(tri, key, value, slots)
    assert torch.equal(ref, tri), "store_kv differs"
    cache = torch.randn(2, num_blocks * block_size, kv_heads, head_dim, generator=g).to(dtype)
    ctx_lens = torch.tensor([1, block_size, 2 * block_size + 3, 5 * block_size - 1], dtype=torch.int32)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:6] for _ in ctx_lens]).to(torch.int32)
    q = torch.randn(len(ctx_lens), heads, head_dim, generator=g).to(dtype)
    want = decode_attention(q.float(), cache.float(), tables, ctx_lens, block_size, head_dim ** -0.5)
    got = paged_decode_attention(q, cache, tables, ctx_lens, block_size, head_dim ** -0.5).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    err = (got - want).abs().max().item()
    assert err < tol, f"decode attention differs by {err} ({dtype}, block {block_size}, dim {head_dim})"


if __name__ == "__main__":
    for dtype in (torch.float32, torch.float16):
        for block_size, head_dim in ((16, 16), (4, 24)):
            check(dtype, block_size, head_dim)
    print("kernels match the reference")
    sys.exit(0)
