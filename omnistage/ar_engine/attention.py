"""Paged attention plugged into transformers models.

``paged_attention`` is registered with ``transformers.AttentionInterface`` under
``ATTN_IMPLEMENTATION``; models loaded with that implementation call it from every attention
layer. All scheduled tokens of all sequences arrive packed as one row; the step's
``AttentionMetadata`` (passed as the ``omni_meta`` forward kwarg, which transformers forwards to
the attention function) says where each token's K/V goes (slot mapping) and which cached
positions each query attends to. ``module.layer_idx`` picks the layer's cache.

Per layer, the model may also pass ``sliding_window`` (Mistral, Qwen2/3 with sliding layers,
Gemma 2/3 local layers, Phi-3) and ``softcap`` (Gemma 2's attention logit softcapping). Both
follow transformers exactly: a query at position p sees key positions k with
``p - sliding_window < k <= p`` (``masking_utils.sliding_window_overlay``), and scores become
``softcap * tanh(scores * scaling / softcap)`` before masking and softmax (Gemma 2's eager
attention). The cache keeps every position; a window only narrows what is read.

Backends: the torch reference below (CPU and anywhere), and Triton kernels on CUDA
(``kernels/``), selected per device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "omnistage_paged"


def visible(kv_pos: torch.Tensor, q_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Which key positions each query position sees (broadcasting): causal, and within
    ``window`` positions counting the query's own (transformers' sliding-window semantics)."""
    seen = kv_pos <= q_pos
    return seen if window is None else seen & (kv_pos > q_pos - window)


def window_start(q_pos: int, window: int | None) -> int:
    """The first key position a query at ``q_pos`` sees."""
    return 0 if window is None else max(0, q_pos - window + 1)


@dataclass
class PrefillSpan:
    """Queries [q_start, q_end) of one sequence, at positions [first_pos, first_pos + n) of it,
    attend causally to its cached positions [0, first_pos + n)."""

    q_start: int
    q_end: int
    first_pos: int
    ctx_slots: torch.Tensor  # [first_pos + n] flat cache slots of positions 0..
    # Masks by window, built on first use: every layer of a step shares them, and layers
    # with the same window (all of them, or Gemma's alternate ones) reuse one.
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict, repr=False)

    def mask(self, window: int | None) -> torch.Tensor:
        """[n, ctx] bool, True = attend, over positions [window_start(first_pos), first_pos + n)."""
        if window not in self._masks:
            dev, lo = self.ctx_slots.device, window_start(self.first_pos, window)
            q_pos = torch.arange(self.first_pos, self.first_pos + self.q_end - self.q_start, device=dev)
            kv_pos = torch.arange(lo, len(self.ctx_slots), device=dev)
            self._masks[window] = visible(kv_pos[None, :], q_pos[:, None], window)
        return self._masks[window]


@dataclass
class AttentionMetadata:
    """One step's attention inputs. Every backend gets the packed form (each token's block-table
    row and context length); backends that attend to decode rows and prefill spans apart (the
    torch reference, the Triton decode kernel) also get the split form."""

    kv_caches: list[torch.Tensor]  # per layer [2, num_blocks * block_size, kv_heads, head_dim]
    slot_mapping: torch.Tensor  # [T] flat slot for each new token
    block_size: int
    tables: torch.Tensor  # [B, max_blocks] int32 block table of each scheduled sequence, padded with block 0
    token_rows: torch.Tensor  # [T] int32: the row of ``tables`` each token belongs to
    ctx_lens: torch.Tensor  # [T] int32: each token attends to its sequence's first ctx_len positions
    backend: Any = None  # optional accelerated implementation (kernels.CpuBackend, kernels.TritonBackend)
    # The split form (empty when the backend is packed):
    decode_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # [D]
    decode_block_tables: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1, dtype=torch.int32))
    decode_ctx_lens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int32))  # [D]
    prefills: list[PrefillSpan] = field(default_factory=list)
    # A packed backend with long prefill spans (in ``prefills``) attends only these tokens; None: all
    kernel_rows: torch.Tensor | None = None


def store_kv(kv_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor) -> None:
    """Write new K/V ([T, kv_heads, head_dim]) into their slots (reference implementation)."""
    kv_cache[0].index_copy_(0, slots, key.to(kv_cache.dtype))
    kv_cache[1].index_copy_(0, slots, value.to(kv_cache.dtype))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
           softcap: float | None) -> torch.Tensor:
    """q [B, heads, n, dim] over k, v [B, kv_heads, ctx, dim]; ``mask`` (True = attend)
    broadcasts to [B, heads, n, ctx]. SDPA unless the scores are softcapped, which SDPA cannot do."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    b, heads, n, dim = q.shape
    kv_heads, ctx = k.shape[1], k.shape[2]
    # Query head h reads kv head h // group, as transformers' repeat_kv; grouping the queries
    # avoids copying K and V once per query head.
    qg = q.reshape(b, kv_heads, heads // kv_heads, n, dim)
    scores = (qg @ k.unsqueeze(2).transpose(-1, -2)).reshape(b, heads, n, ctx) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    out = probs.reshape(b, kv_heads, heads // kv_heads, n, ctx) @ v.unsqueeze(2)
    return out.reshape(b, heads, n, dim)


DECODE_GROUP = 16  # rows of similar context length gathered together


def decode_attention(q: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor, ctx_lens: torch.Tensor,
                     block_size: int, scale: float, window: int | None = None,
                     softcap: float | None = None) -> torch.Tensor:
    """q [D, heads, dim] over each row's first ctx_lens positions -> [D, heads, dim] (reference).

    Gathers whole blocks, not single slots, and rows in groups of similar length so that
    little padding is copied: on a CPU this gather is most of the attention's cost. With a
    window, blocks before every row of the group's window are not gathered."""
    blocks = kv_cache.view(2, -1, block_size, *kv_cache.shape[2:])
    lens = ctx_lens.tolist()
    order = sorted(range(len(lens)), key=lens.__getitem__)
    out = torch.empty_like(q)
    for i in range(0, len(order), DECODE_GROUP):
        group = order[i:i + DECODE_GROUP]  # ascending lengths: the first row's window starts first
        rows = torch.tensor(group, device=q.device)
        first = window_start(lens[group[0]] - 1, window) // block_size
        width = -(-lens[group[-1]] // block_size)
        kv = blocks[:, block_tables[rows, first:width].long()]  # [2, rows, blocks, block, kv_heads, dim]
        kv = kv.flatten(2, 3).transpose(2, 3)  # [2, rows, kv_heads, ctx, dim]
        kv_pos = torch.arange(first * block_size, width * block_size, device=q.device)
        mask = visible(kv_pos[None, :], ctx_lens[rows, None] - 1, window)
        out[rows] = attend(q[rows].unsqueeze(2), kv[0], kv[1], mask[:, None, None, :], scale, softcap).squeeze(2)
    return out


def prefill_attention(q: torch.Tensor, kv_cache: torch.Tensor, span: PrefillSpan, scale: float,
                      window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """q [n, heads, dim] of one sequence, causal over its context -> [n, heads, dim]."""
    slots = span.ctx_slots[window_start(span.first_pos, window):]
    k = kv_cache[0][slots].transpose(0, 1).unsqueeze(0)  # [1, kv_heads, ctx, dim]
    v = kv_cache[1][slots].transpose(0, 1).unsqueeze(0)
    out = attend(q.transpose(0, 1).unsqueeze(0), k, v, span.mask(window), scale, softcap)
    return out[0].transpose(0, 1)


def paged_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                    sliding_window: int | None = None, softcap: float | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, None]:
    meta: AttentionMetadata | None = kwargs.get("omni_meta")
    if meta is None:
        raise RuntimeError(f"{ATTN_IMPLEMENTATION} attention needs the engine's omni_meta forward argument")
    if kwargs.get("s_aux") is not None:  # gpt-oss; features.unsupported_features refuses it earlier
        raise NotImplementedError(f"{ATTN_IMPLEMENTATION} attention has no attention sinks (s_aux)")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q = query[0].transpose(0, 1)  # [T, heads, dim]
    kv_cache = meta.kv_caches[module.layer_idx]
    backend = meta.backend
    if backend is not None:
        backend.store_kv(kv_cache, key[0].transpose(0, 1), value[0].transpose(0, 1), meta.slot_mapping)
    else:
        store_kv(kv_cache, key[0].transpose(0, 1), value[0].transpose(0, 1), meta.slot_mapping)
    if backend is not None and backend.packed and meta.kernel_rows is None:
        out = backend.packed_attention(q.to(kv_cache.dtype), kv_cache, meta.tables, meta.token_rows, meta.ctx_lens,
                                       meta.block_size, scale, sliding_window, softcap)
        return out.to(query.dtype).unsqueeze(0), None
    out = torch.empty_like(q)
    if backend is not None and backend.packed:
        rows = meta.kernel_rows
        if rows.numel():
            out[rows] = backend.packed_attention(q[rows].to(kv_cache.dtype), kv_cache, meta.tables, meta.token_rows[rows],
                                                 meta.ctx_lens[rows], meta.block_size, scale, sliding_window,
                                                 softcap).to(out.dtype)
        # (decode_rows is empty with a packed backend: the kernel took them; the spans follow)
    if meta.decode_rows.numel():
        qd = q[meta.decode_rows].to(kv_cache.dtype)
        decode = backend.decode_attention if backend is not None else decode_attention
        res = decode(qd, kv_cache, meta.decode_block_tables, meta.decode_ctx_lens, meta.block_size, scale,
                     sliding_window, softcap)
        out[meta.decode_rows] = res.to(out.dtype)
    for span in meta.prefills:
        qp = q[span.q_start:span.q_end].to(kv_cache.dtype)
        out[span.q_start:span.q_end] = prefill_attention(qp, kv_cache, span, scale, sliding_window,
                                                         softcap).to(out.dtype)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention)
