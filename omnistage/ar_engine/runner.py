"""Runs one scheduled step through a transformers model with the paged KV cache.

The runner owns the KV cache tensors. For a step it packs every chunk's tokens into one row,
builds the attention metadata, merges media embeddings into ``inputs_embeds`` where placeholder
tokens stand, runs the decoder and the LM head on the rows that sample.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch

from omnistage.ar_engine.attention import AttentionMetadata, PrefillSpan
from omnistage.ar_engine.graphs import DecodeGraphs, GraphSettings
from omnistage.ar_engine.packing import PackedLinear, pack_linears, worth_packing
from omnistage.ar_engine.sequence import StepPlan


# With a packed backend, a prefill chunk of at least SDPA_ROWS tokens whose (query, key) pairs number
# at least SDPA_PAIRS attends through SDPA where heads have at least SDPA_MIN_HEAD_DIM dimensions:
# there its matrix multiplies beat the kernel's row-by-row loop (12 heads of 64: 40 new tokens after
# a cached 1600-token prefix, or a fresh 1582-token prompt). With smaller heads the kernel was the
# faster everywhere measured (4 heads of 16: a fresh 1582-token prompt 20.7 against 34.8 ms per step).
SDPA_ROWS, SDPA_PAIRS, SDPA_MIN_HEAD_DIM = 32, 1 << 15, 64


def attends_by_sdpa(chunk: Any, head_dim: int) -> bool:
    return (head_dim >= SDPA_MIN_HEAD_DIM and chunk.length >= SDPA_ROWS
            and chunk.length * (chunk.start + chunk.length) >= SDPA_PAIRS)


# A CPU step of fewer multiply-adds than this runs on one thread. Splitting it gains nothing (a
# 2-layer, 64-hidden model's steps of up to 64 tokens take the same time on one core as on two),
# and waking a second core that has gone idle costs far more: on this 2-vCPU machine half such
# steps took 12-18 ms on two threads instead of 2.2 ms, as the second core woke from idle.
SMALL_STEP_MACS = 1 << 24


def step_macs(plan: StepPlan, linear_params: int, attention_unit: int) -> int:
    """A step's multiply-adds: every token through every linear layer (the LM head counted for
    all, an upper bound), plus each (query, key) pair times ``attention_unit`` (layers x query
    heads x head_dim x 2, for scores and values)."""
    tokens = sum(c.length for c in plan.chunks)
    pairs = sum(c.length * c.start + c.length * (c.length + 1) // 2 for c in plan.chunks)
    return tokens * linear_params + pairs * attention_unit


@contextmanager
def threads_at_most(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if before <= n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StepInputs(NamedTuple):
    inputs: torch.Tensor  # [T, hidden] the decoder's input embeddings, packed
    positions: torch.Tensor  # [1, T], or [3, 1, T] (M-RoPE)
    meta: AttentionMetadata
    sample_rows: list[int]
    embeds: torch.Tensor  # [T, embed] before the input projection (a talker's)


class StepResult(NamedTuple):
    logits: torch.Tensor  # [rows that sample, vocab]
    hidden: torch.Tensor  # [T, hidden] last-layer states of every computed position
    sample_rows: list[int]  # packed position of each sampling row
    embeds: torch.Tensor  # [T, embed] the input embeddings of every computed position


def model_parts(model: Any) -> tuple[Any, Any, Any, Any]:
    """(token embedding, input projection or None, decoder, head) of a causal LM, a VL model or a
    Qwen2.5-Omni talker (codec embedding, thinker-to-talker projection, decoder, codec head)."""
    if hasattr(model, "codec_head"):
        return model.get_input_embeddings(), model.thinker_to_talker_proj, model.model, model.codec_head
    return model.get_input_embeddings(), None, model.get_decoder(), model.get_output_embeddings()


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def kv_shape(config: Any, tp_size: int = 1) -> tuple[int, int, int]:
    """(layers, KV heads, head_dim) of one rank's cache: the heads split over ``tp_size`` ranks."""
    cfg = text_config(config)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, cfg.num_key_value_heads // tp_size, head_dim


def final_logit_softcap(config: Any) -> float | None:
    """Gemma 2/3's ``final_logit_softcapping``. Only those families' configs define the
    attribute, so its absence means none (features.py lists the final-logit processing of
    other families, which the engine does not do)."""
    return getattr(text_config(config), "final_logit_softcapping", None)


class ModelRunner:
    def __init__(self, model: Any, num_blocks: int, block_size: int, kv_dtype: torch.dtype | None = None,
                 backend: Any = None, media_encoder: Callable[[list[Any]], list[torch.Tensor]] | None = None,
                 tp_size: int = 1, graphs: GraphSettings | None = None) -> None:
        """``tp_size``: the model is this rank's shard of a tensor-parallel one (``parallel``):
        its cache holds its share of the KV heads, and its linear layers stay as sharded.
        ``graphs``: decode steps through static buffers (CUDA graphs, ``graphs.py``; a packed
        backend only); the cache then has one scratch block past ``num_blocks``."""
        self.model = model
        self.block_size = block_size
        self.device = next(model.parameters()).device
        self.embed, self.project, self.decoder, self.lm_head = model_parts(model)
        if backend is not None and backend.packs_linears and tp_size == 1:
            self._pack(model)
        self.backend = backend
        self.media_encoder = media_encoder  # spans -> embeds, for spans that arrived without them
        # Qwen2-VL-style models (and the Omni talker) take 3-row (temporal, height, width) rotary positions.
        self.mrope = hasattr(getattr(model, "model", None), "get_rope_index") or self.project is not None
        self.final_softcap = final_logit_softcap(model.config)
        layers, kv_heads, head_dim = kv_shape(model.config, tp_size)
        self.head_dim = head_dim
        dtype = kv_dtype or next(model.parameters()).dtype
        graphs = graphs if backend is not None and backend.packed else None
        blocks = num_blocks + (graphs is not None)  # (the scratch block the padding rows of a graph use)
        self.kv_caches = [torch.zeros(2, blocks * block_size, kv_heads, head_dim, dtype=dtype, device=self.device)
                          for _ in range(layers)]
        self.graphs = None if graphs is None else DecodeGraphs(self._decode_all, graphs, self.kv_caches, block_size,
                                                               num_blocks, backend)
        if self.graphs is not None:
            with torch.inference_mode():
                self.graphs.prepare(self.decoder.config.hidden_size, next(model.parameters()).dtype,
                                    (3, 1) if self.mrope else (1,))
        self.linear_params = sum(m.in_features * m.out_features for m in (*self.decoder.modules(), self.lm_head)
                                 if hasattr(m, "in_features") and hasattr(m, "out_features"))
        q_heads = text_config(model.config).num_attention_heads // tp_size
        self.attention_unit = layers * q_heads * head_dim * 2

    def _pack(self, model: Any) -> None:
        """The decoder's linear layers and the LM head, packed for oneDNN where they are large
        enough to gain from it (``packing``); a tied LM
        head gets a packed copy (its weight stays in use as the token embedding)."""
        pack_linears(self.decoder)
        head = self.lm_head
        if worth_packing(head):
            self.lm_head = PackedLinear(head)
            if head.weight is not self.embed.weight and model.get_output_embeddings() is head:
                model.set_output_embeddings(self.lm_head)  # untied: drop the plain weight

    def read_kv(self, slots: torch.Tensor) -> torch.Tensor:
        """K/V at flat cache ``slots``: [layers, 2, n, kv_heads, head_dim], on the cache's device
        (the wire hands a GPU's to a stage on a GPU of the same host without the host)."""
        return torch.stack([cache[:, slots] for cache in self.kv_caches])

    def write_kv(self, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """Write ``kv`` ([layers, 2, n, kv_heads, head_dim]) at flat cache ``slots``."""
        for layer, cache in enumerate(self.kv_caches):
            cache[:, slots] = kv[layer].to(cache.device, cache.dtype)

    @torch.inference_mode()
    def run(self, plan: StepPlan) -> StepResult:
        small = self.device.type == "cpu" and step_macs(plan, self.linear_params, self.attention_unit) < SMALL_STEP_MACS
        with threads_at_most(1) if small else nullcontext():
            step = self.prepare(plan)
            if self.graphs is not None and self._graphable(plan):
                logits, hidden = self.graphs.run(step.inputs, step.positions, step.meta)
                return StepResult(logits.float(), hidden, step.sample_rows, step.embeds)
            return self.forward(step)

    def _graphable(self, plan: StepPlan) -> bool:
        """A decode-only step (every row a sampling one) that a bucket holds."""
        assert self.graphs is not None
        return (all(c.length == 1 and c.samples for c in plan.chunks)
                and self.graphs.bucket(len(plan.chunks)) is not None)

    def _decode_all(self, inputs: torch.Tensor, positions: torch.Tensor,
                    meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, hidden) of every row: what a decode graph captures."""
        hidden = self.decoder(inputs_embeds=inputs.unsqueeze(0), position_ids=positions, omni_meta=meta,
                              use_cache=False).last_hidden_state[0]
        return self._logits(hidden), hidden

    @torch.inference_mode()
    def prepare(self, plan: StepPlan) -> StepInputs:
        """Everything the decoder needs for the step: what tensor-parallel ranks receive."""
        ids, positions, meta, sample_rows = self._prepare(plan)
        embeds = self._embed(plan, ids)
        inputs = embeds if self.project is None else self.project(embeds)
        return StepInputs(inputs, positions, meta, sample_rows, embeds)

    @torch.inference_mode()
    def forward(self, step: StepInputs) -> StepResult:
        inputs, meta, sample_rows = step.inputs, step.meta, step.sample_rows
        out = self.decoder(inputs_embeds=inputs.unsqueeze(0), position_ids=step.positions, omni_meta=meta,
                           use_cache=False)
        hidden = out.last_hidden_state[0]
        logits = self._logits(hidden[sample_rows]) if sample_rows else hidden.new_zeros((0, 1))
        return StepResult(logits.float(), hidden, sample_rows, step.embeds)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        if self.final_softcap is not None:
            # In the model's dtype, as XForCausalLM.forward does it (which the decoder call skips).
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    def _prepare(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """The step's packed inputs, built as whole tensors: each token's block-table row, position,
        cache slot and context length come from a few vector operations, not a loop over tokens."""
        bs, dev, chunks = self.block_size, self.device, plan.chunks
        lens = torch.tensor([c.length for c in chunks])
        starts = torch.tensor([c.start for c in chunks])
        width = max(len(c.seq.block_table) for c in chunks)
        tables = torch.tensor([c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in chunks],
                              dtype=torch.int32)
        rows = torch.repeat_interleave(torch.arange(len(chunks)), lens)
        offsets = torch.cumsum(lens, 0) - lens  # packed position of each chunk's first token
        pos = torch.arange(len(rows)) - offsets[rows] + starts[rows]
        slots = tables[rows, pos // bs].long() * bs + pos % bs
        ids: list[int] = []
        sample_rows: list[int] = []
        offset = 0
        for chunk in chunks:
            ids.extend(chunk.seq.token_slice(chunk.start, chunk.length))
            offset += chunk.length
            if chunk.samples:
                sample_rows.append(offset - 1)
        meta = AttentionMetadata(kv_caches=self.kv_caches, slot_mapping=slots.to(dev), block_size=bs,
                                 tables=tables.to(dev), token_rows=rows.to(torch.int32).to(dev),
                                 ctx_lens=(pos + 1).to(torch.int32).to(dev), backend=self.backend)
        if self.backend is None or not self.backend.packed:
            self._split_metadata(meta, chunks, offsets, tables)
        elif self.backend.sdpa_prefills and any(attends_by_sdpa(c, self.head_dim) for c in chunks):
            self._long_prefills(meta, chunks, offsets, tables, rows)
        return torch.tensor(ids, dtype=torch.long, device=dev), self._positions(chunks, pos).to(dev), meta, sample_rows

    def _split_metadata(self, meta: AttentionMetadata, chunks: list[Any], offsets: torch.Tensor,
                        tables: torch.Tensor) -> None:
        """Decode rows and per-sequence prefill spans, for backends that attend to them apart."""
        dev = self.device
        decodes = [i for i, c in enumerate(chunks) if c.length == 1]
        meta.decode_rows = offsets[decodes].to(dev)
        meta.decode_block_tables = tables[decodes].to(dev)
        meta.decode_ctx_lens = meta.ctx_lens[meta.decode_rows]
        meta.prefills = [self._span(chunks[i], int(offsets[i]), tables[i]) for i, c in enumerate(chunks) if c.length > 1]

    def _long_prefills(self, meta: AttentionMetadata, chunks: list[Any], offsets: torch.Tensor,
                       tables: torch.Tensor, rows: torch.Tensor) -> None:
        """Long prefill chunks go to SDPA as spans (``attends_by_sdpa``); the kernel takes every other
        token."""
        dev = self.device
        long = [i for i, c in enumerate(chunks) if attends_by_sdpa(c, self.head_dim)]
        meta.prefills = [self._span(chunks[i], int(offsets[i]), tables[i]) for i in long]
        is_long = torch.zeros(len(chunks), dtype=torch.bool)
        is_long[long] = True
        meta.kernel_rows = torch.nonzero(~is_long[rows]).flatten().to(dev)

    def _span(self, chunk: Any, offset: int, table: torch.Tensor) -> PrefillSpan:
        """A prefill chunk packed at ``offset``, with the cache slots of its whole context."""
        ctx = torch.arange(chunk.start + chunk.length)
        slots = table[ctx // self.block_size].long() * self.block_size + ctx % self.block_size
        return PrefillSpan(offset, offset + chunk.length, chunk.start, slots.to(self.device))

    def _positions(self, chunks: list[Any], pos: torch.Tensor) -> torch.Tensor:
        """Rotary positions: [1, T], or [3, 1, T] for M-RoPE models."""
        if not self.mrope:
            return pos.unsqueeze(0)
        if all(c.seq.mrope_positions is None for c in chunks):
            return pos.unsqueeze(0).expand(3, -1).unsqueeze(1)
        return torch.cat([_positions(c.seq, c.start, c.length, True) for c in chunks], dim=-1).unsqueeze(1)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids)

    def _embed(self, plan: StepPlan, ids: torch.Tensor) -> torch.Tensor:
        embeds = self.token_embeddings(ids)
        self._fill_missing_media(plan)
        offset = 0
        for chunk in plan.chunks:
            lo, hi = chunk.start, chunk.start + chunk.length
            for span in chunk.seq.media:
                a, b = max(lo, span.start), min(hi, span.start + span.length)
                if a < b:
                    rows = span.embeds[a - span.start:b - span.start].to(embeds.device, embeds.dtype)
                    embeds[offset + a - lo:offset + b - lo] = rows
            if chunk.seq.fed is not None:
                rows, keep = chunk.seq.fed.rows(lo, chunk.length)
                part = embeds[offset:offset + chunk.length]
                embeds[offset:offset + chunk.length] = (part * keep.to(part.device, part.dtype)[:, None]
                                                        + rows.to(part.device, part.dtype))
            offset += chunk.length
        return embeds


    def _fill_missing_media(self, plan: StepPlan) -> None:
        missing = [span for chunk in plan.chunks for span in chunk.seq.media
                   if span.embeds is None and span.start < chunk.start + chunk.length
                   and chunk.start < span.start + span.length]
        if not missing:
            return
        if self.media_encoder is None:
            raise RuntimeError("a media span without embeddings must be computed, and no media encoder is set")
        for span, embeds in zip(missing, self.media_encoder(missing)):
            span.embeds = embeds


def _positions(seq: Any, start: int, n: int, mrope: bool) -> torch.Tensor:
    """Rotary positions of tokens [start, start+n): 1-D, or 3-row M-RoPE for Qwen2-VL."""
    if seq.mrope_positions is None:
        flat = torch.arange(start, start + n).unsqueeze(0)  # [1, n]
        return flat.expand(3, -1) if mrope else flat
    prompt_len = seq.mrope_positions.shape[1]
    rows = []
    if start < prompt_len:
        rows.append(seq.mrope_positions[:, start:min(prompt_len, start + n)])
    if start + n > prompt_len:
        text = torch.arange(max(start, prompt_len), start + n) + seq.mrope_delta
        rows.append(text.unsqueeze(0).expand(3, -1))
    return torch.cat(rows, dim=1)  # [3, n]
