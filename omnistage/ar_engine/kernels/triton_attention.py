"""Triton kernels: KV-cache store, paged decode attention, and packed (varlen) attention over
a whole step.

Layouts match the torch reference: a layer's cache is ``[2, num_blocks * block_size, kv_heads,
head_dim]``; a decode row ``s`` attends to the first ``ctx_lens[s]`` positions of its blocks
``block_tables[s]``. The decode kernel runs one program per (row, query head) and walks the
row's blocks with an online softmax, so no context is ever gathered into a padded tensor; with a
sliding window it starts at the window's first block, and softcapped scores are capped before
masking, as in the reference. The packed kernel takes a step's every query row (prefill chunks
with their cached prefix, and decode rows) in one launch: flash-attention style, a tile of up to
16 consecutive rows of one sequence shares each K/V block it loads (matmuls on tensor cores),
causal by each row's own context length. Offsets into the cache are 64-bit (slots and block ids widened
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


@triton.jit
def _packed_kernel(q_ptr, cache_ptr, table_ptr, rows_ptr, ctx_ptr, out_ptr, tile_start_ptr, tile_len_ptr, scale,
                   window, softcap, q_stride_t, q_stride_h, table_stride, cache_kv_stride, cache_slot_stride,
                   cache_head_stride, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   HAS_SOFTCAP: tl.constexpr, USE_DOT: tl.constexpr, IEEE: tl.constexpr):
    """One tile of up to BLOCK_M consecutive query rows of one sequence (consecutive positions),
    one query head: the tile's queries share every K/V block they load."""
    tile = tl.program_id(0)
    head = tl.program_id(1)
    count = tl.load(tile_len_ptr + tile)
    if count == 0:
        return
    first = tl.load(tile_start_ptr + tile)
    kv_head = head // GROUP
    m_idx = tl.arange(0, BLOCK_M)
    rmask = m_idx < count
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    rows = first + m_idx
    q_off = rows.to(tl.int64)[:, None] * q_stride_t + head * q_stride_h + d[None, :]
    q = tl.load(q_ptr + q_off, mask=rmask[:, None] & dmask[None, :], other=0.0)
    ctx = tl.load(ctx_ptr + rows, mask=rmask, other=0)  # each row sees positions [lo, ctx)
    table_row = tl.load(rows_ptr + first).to(tl.int64)
    top = tl.max(ctx, axis=0)
    lo = tl.zeros([BLOCK_M], dtype=tl.int32)
    if HAS_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    low = tl.min(tl.where(rmask, lo, top), axis=0)
    m = tl.full([BLOCK_M], -float("inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    offs = tl.arange(0, BLOCK_SIZE)
    for b in range(low // BLOCK_SIZE, tl.cdiv(top, BLOCK_SIZE)):
        block = tl.load(table_ptr + table_row * table_stride + b).to(tl.int64)  # (64-bit cache offsets)
        pos = b * BLOCK_SIZE + offs
        base = (block * BLOCK_SIZE + offs)[:, None] * cache_slot_stride + kv_head * cache_head_stride + d[None, :]
        kmask = (pos < top)[:, None] & dmask[None, :]
        k = tl.load(cache_ptr + base, mask=kmask, other=0.0)
        v = tl.load(cache_ptr + (base + cache_kv_stride), mask=kmask, other=0.0)
        if USE_DOT:
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
        else:
            s = tl.sum(q.to(tl.float32)[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
        s = s * scale
        if HAS_SOFTCAP:
            s = softcap * _tanh(s / softcap)
        valid = (pos[None, :] < ctx[:, None]) & (pos[None, :] >= lo[:, None]) & rmask[:, None]
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # (a row with nothing visible yet)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        l = l * alpha + tl.sum(p, axis=1)
        if USE_DOT:
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
        else:
            pv = tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        acc = acc * alpha[:, None] + pv
        m = m_new
    out = acc / tl.where(l > 0, l, 1.0)[:, None]  # (rows past the tile's count: 0, not stored)
    tl.store(out_ptr + q_off, out.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


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


def packed_tiles(token_rows: torch.Tensor, sequences: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first row, row count) of each tile: every sequence's rows (consecutive, in table-row
    order, as the runner packs them) cut into tiles of at most ``block_m``. Computed on the
    device, without a sync: there are at most cdiv(T, block_m) + sequences tiles; the unused
    ones count 0 rows. ``token_rows`` ascend (each sequence's rows together)."""
    ids = torch.arange(sequences, device=token_rows.device, dtype=token_rows.dtype)
    # (searchsorted, not bincount: bincount reads the largest id back to size its output, a sync
    # that a CUDA graph cannot capture)
    counts = torch.searchsorted(token_rows, ids, right=True) - torch.searchsorted(token_rows, ids)
    tiles = (counts + block_m - 1) // block_m
    ends = torch.cumsum(tiles, 0)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(triton.cdiv(len(token_rows), block_m) + sequences, device=token_rows.device)
    seq = torch.searchsorted(ends, slots, right=True).clamp(max=sequences - 1)
    index = slots - (ends[seq] - tiles[seq])
    length = (counts[seq] - index * block_m).clamp(0, block_m)
    length = torch.where(slots < ends[-1], length, 0)
    return (starts[seq] + index * block_m).to(torch.int32), length.to(torch.int32)


def packed_attention(q: torch.Tensor, kv_cache: torch.Tensor, tables: torch.Tensor, token_rows: torch.Tensor,
                     ctx_lens: torch.Tensor, block_size: int, scale: float, window: int | None = None,
                     softcap: float | None = None) -> torch.Tensor:
    """A whole packed step in one launch: q [T, heads, dim], row t attending to positions
    [0, ctx_lens[t]) (its window's part) of block-table row ``token_rows[t]`` of ``tables`` (a
    prefill chunk's rows see its cached prefix and the chunk up to themselves: causal)."""
    rows, heads, head_dim = q.shape
    q = q.contiguous()
    out = torch.empty_like(q)
    if rows == 0:
        return out
    decode_only = rows == tables.shape[0]  # (one row per sequence: tiles of one, no matmul)
    block_m = 1 if decode_only else 16
    if decode_only:
        starts = torch.arange(rows, dtype=torch.int32, device=q.device)
        lengths = torch.ones(rows, dtype=torch.int32, device=q.device)
    else:
        starts, lengths = packed_tiles(token_rows, tables.shape[0], block_m)
    head_block = triton.next_power_of_2(head_dim)
    use_dot = block_m >= 16 and block_size >= 16 and head_block >= 16
    _packed_kernel[(len(starts), heads)](q, kv_cache, tables, token_rows, ctx_lens, out, starts, lengths, scale,
                                         window or 0, softcap or 1.0, q.stride(0), q.stride(1), tables.stride(0),
                                         kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2),
                                         GROUP=heads // kv_cache.shape[2], HEAD_DIM=head_dim, BLOCK_D=head_block,
                                         BLOCK_SIZE=block_size, BLOCK_M=block_m, HAS_WINDOW=window is not None,
                                         HAS_SOFTCAP=softcap is not None, USE_DOT=use_dot,
                                         IEEE=kv_cache.dtype == torch.float32)
    return out


class TritonBackend:
    packed = True  # a whole step (prefill chunks and decode rows) in one launch per layer
    packs_linears = False
    sdpa_prefills = False
    store_kv = staticmethod(store_kv)
    decode_attention = staticmethod(paged_decode_attention)
    packed_attention = staticmethod(packed_attention)
