"""Triton kernels: KV-cache store and paged decode attention.

Layouts match the torch reference: a layer's cache is ``[2, num_blocks * block_size, kv_heads,
head_dim]``; a decode row ``s`` attends to the first ``ctx_lens[s]`` positions of its blocks
``block_tables[s]``. The decode kernel runs one program per (row, query head) and walks the
row's blocks with an online softmax, so no context is ever gathered into a padded tensor; with a
sliding window it starts at the window's first block, and softcapped scores are capped before
masking, as in the reference. Offsets into the cache are 64-bit (slots and block ids widened
before they are scaled), so a cache may pass 2^31 elements.
Tested against the reference under ``TRITON_INTERPRET=1`` (fp32/fp16, and a sparse memory-mapped
cache past 2^31 elements).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, cache_ptr, slot_ptr, stride_t, stride_h, cache_kv_stride,
                     cache_slot_stride, cache_head_stride, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_ptr + token).to(tl.int64)  # (offsets into the cache in 64 bits: it may pass 2^31 elements)
    d = tl.arange(0, BLOCK_D)
    mask = d < HEAD_DIM
    src = token * stride_t + head * stride_h + d
    dst = slot * cache_slot_stride + head * cache_head_stride + d
    k = tl.load(key_ptr + src, mask=mask)
    v = tl.load(value_ptr + src, mask=mask)
    tl.store(cache_ptr + dst, k.to(cache_ptr.dtype.element_ty), mask=mask)
    tl.store(cache_ptr + (dst + cache_kv_stride), v.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tanh(x):
    # exp form: libdevice's tanh is missing from Triton's interpreter. Saturates to +-1 (no NaN)
    # when exp overflows to inf or underflows to 0.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _paged_decode_kernel(q_ptr, cache_ptr, table_ptr, ctx_ptr, out_ptr, scale, window, softcap, q_stride_s,
                         q_stride_h, table_stride, cache_kv_stride, cache_slot_stride, cache_head_stride,
                         GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    row = tl.program_id(0)
    head = tl.program_id(1)
    kv_head = head // GROUP
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = tl.load(q_ptr + row * q_stride_s + head * q_stride_h + d, mask=dmask, other=0.0).to(tl.float32)
    ctx = tl.load(ctx_ptr + row)
    lo = 0  # the first visible position: the query (at ctx - 1) sees the last ``window`` positions
    if HAS_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    m = -float("inf")
    l = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    offs = tl.arange(0, BLOCK_SIZE)
    for b in range(lo // BLOCK_SIZE, tl.cdiv(ctx, BLOCK_SIZE)):  # blocks wholly before the window: skipped
        block = tl.load(table_ptr + row * table_stride + b).to(tl.int64)  # (64-bit cache offsets)
        pos = b * BLOCK_SIZE + offs
        valid = (pos < ctx) & (pos >= lo)
        base = (block * BLOCK_SIZE + offs)[:, None] * cache_slot_stride + kv_head * cache_head_stride + d[None, :]
        lmask = valid[:, None] & dmask[None, :]
        k = tl.load(cache_ptr + base, mask=lmask, other=0.0).to(tl.float32)
        v = tl.load(cache_ptr + (base + cache_kv_stride), mask=lmask, other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], axis=1) * scale
        if HAS_SOFTCAP:
            s = softcap * _tanh(s / softcap)
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        p = tl.exp(s - m_new)
        alpha = tl.exp(m - m_new)
        l = l * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        m = m_new
    out = acc / l
    tl.store(out_ptr + row * q_stride_s + head * q_stride_h + d, out.to(out_ptr.dtype.element_ty), mask=dmask)


def store_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor) -> None:
    """Triton twin of ``attention.store_kv``: key/value [T, kv_heads, head_dim]."""
    tokens, heads, head_dim = key.shape
    if tokens == 0:
        return
    key, value = key.contiguous(), value.contiguous()
    _store_kv_kernel[(tokens, heads)](key, value, kv_cache, slots, key.stride(0), key.stride(1),
                                      kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
                                      HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim))


def paged_decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor,
                           ctx_lens: torch.Tensor, block_size: int, scale: float, window: int | None = None,
                           softcap: float | None = None) -> torch.Tensor:
    """Triton twin of ``attention.decode_attention``: q [D, heads, head_dim] -> same shape."""
    rows, heads, head_dim = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    if rows == 0:
        return out
    kv_heads = kv_cache.shape[2]
    # The unused one of window/softcap is passed as a placeholder its HAS_ flag compiles out.
    _paged_decode_kernel[(rows, heads)](q, kv_cache, block_tables, ctx_lens, out, scale, window or 0,
                                        softcap or 1.0, q.stride(0), q.stride(1), block_tables.stride(0),
                                        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
                                        GROUP=heads // kv_heads, HEAD_DIM=head_dim,
                                        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_SIZE=block_size,
                                        HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None)
    return out


class TritonBackend:
    packed = False  # decode rows through the kernel, prefill spans through the torch reference
    packs_linears = False
    store_kv = staticmethod(store_kv)
    decode_attention = staticmethod(paged_decode_attention)
