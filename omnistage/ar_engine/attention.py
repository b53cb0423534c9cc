"""Paged attention plugged into transformers models.

``paged_attention`` is registered with ``transformers.AttentionInterface`` under
``ATTN_IMPLEMENTATION``; models loaded with that implementation call it from every attention
layer. All scheduled tokens of all sequences arrive packed as one row; the step's
``AttentionMetadata`` (passed as the ``omni_meta`` forward kwarg, which transformers forwards to
the attention function) says where each token's K/V goes (slot mapping) and which cached
positions each query attends to. ``module.layer_idx`` picks the layer's cache.

Backends: the torch reference below (CPU and anywhere), and Triton kernels on CUDA
(``kernels/``), selected per device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "omnistage_paged"


@dataclass
class PrefillSpan:
    """Queries [q_start, q_end) of one sequence attend to its first ``ctx_len`` cached positions."""

    q_start: int
    q_end: int
    ctx_slots: torch.Tensor  # [ctx_len] flat cache slots
    causal_mask: torch.Tensor  # [n_queries, ctx_len] bool, True = attend


@dataclass
class AttentionMetadata:
    kv_caches: list[torch.Tensor]  # per layer [2, num_blocks * block_size, kv_heads, head_dim]
    slot_mapping: torch.Tensor  # [T] flat slot for each new token
    decode_rows: torch.Tensor  # [D] packed positions of single-token (decode) queries
    decode_block_tables: torch.Tensor  # [D, max_blocks] int32, padded with block 0
    decode_ctx_lens: torch.Tensor  # [D] int32: each decode attends to its first ctx_len positions
    block_size: int
    prefills: list[PrefillSpan]
    backend: Any = None  # optional accelerated implementation (kernels.TritonBackend)


def store_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor) -> None:
    """Write new K/V ([T, kv_heads, head_dim]) into their slots (reference implementation)."""
    kv_cache[0].index_copy_(0, slots, key.to(kv_cache.dtype))
    kv_cache[1].index_copy_(0, slots, value.to(kv_cache.dtype))


DECODE_GROUP = 16  # rows of similar context length gathered together


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, ctx_lens: torch.Tensor,
                     block_size: int, scale: float) -> torch.Tensor:
    """q [D, heads, dim] over each row's first ctx_lens positions -> [D, heads, dim] (reference).

    Gathers whole blocks, not single slots, and rows in groups of similar length so that
    little padding is copied: on a CPU this gather is most of the attention's cost."""
    blocks = kv_cache.view(2, -1, block_size, *kv_cache.shape[2:])
    lens = ctx_lens.tolist()
    order = sorted(range(len(lens)), key=lens.__getitem__)
    out = torch.empty_like(q)
    for i in range(0, len(order), DECODE_GROUP):
        rows = torch.tensor(order[i:i + DECODE_GROUP], device=q.device)
        width = -(-lens[order[min(i + DECODE_GROUP, len(order)) - 1]] // block_size)
        kv = blocks[:, block_tables[rows, :width].long()]  # [2, rows, width, block, kv_heads, dim]
        kv = kv.flatten(2, 3).transpose(2, 3)  # [2, rows, kv_heads, ctx, dim]
        mask = torch.arange(width * block_size, device=q.device)[None, :] < ctx_lens[rows, None]
        out[rows] = F.scaled_dot_product_attention(q[rows].unsqueeze(2), kv[0], kv[1], attn_mask=mask[:, None, None, :],
                                                   scale=scale, enable_gqa=True).squeeze(2)
    return out


def prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, span: PrefillSpan, scale: float) -> torch.Tensor:
    """q [n, heads, dim] of one sequence, causal over its context -> [n, heads, dim]."""
    k = kv_cache[0][span.ctx_slots].transpose(0, 1).unsqueeze(0)  # [1, kv_heads, ctx, dim]
    v = kv_cache[1][span.ctx_slots].transpose(0, 1).unsqueeze(0)
    out = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), k, v, attn_mask=span.causal_mask,
                                         scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    meta: AttentionMetadata | None = kwargs.get("omni_meta")
    if meta is None:
        raise RuntimeError(f"{ATTN_IMPLEMENTATION} attention needs the engine's omni_meta forward argument")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q = query[0].transpose(0, 1)  # [T, heads, dim]
    kv_cache = meta.kv_caches[module.layer_idx]
    backend = meta.backend
    if backend is not None:
        backend.store_kv(kv_cache, key[0].transpose(0, 1), value[0].transpose(0, 1), meta.slot_mapping)
    else:
        store_kv(kv_cache, key[0].transpose(0, 1), value[0].transpose(0, 1), meta.slot_mapping)
    out = torch.empty_like(q)
    if meta.decode_rows.numel():
        qd = q[meta.decode_rows].to(kv_cache.dtype)
        attend = backend.decode_attention if backend is not None else decode_attention
        res = attend(qd, kv_cache, meta.decode_block_tables, meta.decode_ctx_lens, meta.block_size, scale)
        out[meta.decode_rows] = res.to(out.dtype)
    for span in meta.prefills:
        qp = q[span.q_start:span.q_end].to(kv_cache.dtype)
        out[span.q_start:span.q_end] = prefill_attention(qp, kv_cache, span, scale).to(out.dtype)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
