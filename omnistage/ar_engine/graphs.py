"""Decode steps replayed from CUDA graphs.

A decode-only step (one new token per running sequence: the steady state of serving) runs the
same kernels every time, with only the data changing; at small batches launching them one by one
costs more than their work. ``DecodeGraphs`` keeps one set of static input buffers (input
embeddings, positions, cache slots, block tables, context lengths) sized for the largest bucket,
and per bucket size (1, 2, 4, then multiples of 8 up to ``max_seqs``) one graph of the decoder
and LM head over views of them. A step of n rows is padded to the smallest bucket of at least
n: the padding rows attend to, and write their K/V into, a scratch block that no sequence owns
(the runner allocates it past the engine's blocks).

Every bucket is captured when the engine starts (``prepare``), largest first into one memory
pool (the engine keeps room for it beside the KV cache: ``ModelShape.graph_bytes``), over
padding rows only, before the worker serves: no capture happens mid-serving, and a capture is
thread-local, so another thread's CUDA call neither breaks it nor lands in it. A bucket whose
capture fails runs eagerly through the same buffers, with a warning saying why.

Where CUDA graphs do not exist (a CPU) the same buffers and padding run eagerly: that is how the
padding and the reuse of buffers are tested without a GPU. ``EngineConfig.enforce_eager`` turns
the whole path off.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch

from omnistage.ar_engine.attention import AttentionMetadata
from omnistage.ar_engine.shape import bucket_sizes

log = logging.getLogger(__name__)

class GraphSettings(NamedTuple):
    capture: bool  # record CUDA graphs; False: the same static buffers, run eagerly
    max_seqs: int  # the largest decode step
    table_width: int  # block-table columns: blocks of one max_model_len sequence


Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata], tuple[torch.Tensor, torch.Tensor]]


class DecodeGraphs:
    def __init__(self, forward: Forward, settings: GraphSettings, kv_caches: list[torch.Tensor], block_size: int,
                 scratch_block: int, backend: Any) -> None:
        """``forward(inputs [b, hidden], positions [..., b], meta) -> (logits [b, vocab], hidden
        [b, hidden])`` runs the decoder and LM head over every row."""
        self.forward, self.capture = forward, settings.capture
        self.sizes = bucket_sizes(settings.max_seqs)
        top, device = self.sizes[-1], kv_caches[0].device
        self.scratch_block, self.scratch_slot = scratch_block, scratch_block * block_size
        self.inputs: torch.Tensor | None = None  # [top, the decoder's input width] (prepare)
        self.positions: torch.Tensor | None = None  # [1, top], or M-RoPE's [3, 1, top] (prepare)
        self.slots = torch.full((top,), self.scratch_slot, dtype=torch.long, device=device)
        self.tables = torch.full((top, settings.table_width), scratch_block, dtype=torch.int32, device=device)
        self.ctx_lens = torch.ones(top, dtype=torch.int32, device=device)
        self.metas = {b: AttentionMetadata(kv_caches, self.slots[:b], block_size, self.tables[:b],
                                           torch.arange(b, dtype=torch.int32, device=device), self.ctx_lens[:b],
                                           backend=backend) for b in self.sizes}
        self.graphs: dict[int, Any] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pool: Any = None  # the captured graphs share one memory pool

    def prepare(self, width: int, dtype: torch.dtype, position_rows: tuple[int, ...]) -> None:
        """Make the input buffers ([top, width] of ``dtype``, positions [*position_rows, top]) and
        run every bucket over padding rows only, largest first: captured as its graph on a GPU,
        eagerly otherwise (which touches the scratch block only)."""
        top, device = self.sizes[-1], self.slots.device
        self.inputs = torch.zeros(top, width, dtype=dtype, device=device)
        self.positions = torch.zeros(*position_rows, top, dtype=torch.long, device=device)
        with _on(device):
            self._prepare_all()

    def _prepare_all(self) -> None:
        for b in reversed(self.sizes):
            if not self.capture:
                self._forward(b)
                continue
            try:
                self._record(b)
            except RuntimeError as err:  # (torch raises RuntimeError for a failed capture)
                log.warning("decode graph of %d rows: capture failed (%s); it runs eagerly", b, err)
                self.graphs.pop(b, None)

    def bucket(self, rows: int) -> int | None:
        """The bucket a step of ``rows`` decode rows pads to (None: more than the largest)."""
        return next((b for b in self.sizes if b >= rows), None)

    def run(self, inputs: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode step's (logits, hidden) of its ``n`` rows, from the bucket's graph."""
        n = len(inputs)
        b = self.bucket(n)
        assert b is not None, f"a decode step of {n} rows has no bucket"
        self._fill(inputs, positions, meta, n, b)
        if b in self.graphs:
            with _on(self.slots.device):
                self.graphs[b].replay()
            logits, hidden = self.outputs[b]
        else:
            logits, hidden = self._forward(b)
        return logits[:n].clone(), hidden[:n].clone()  # (the buffers are the next step's)

    def _fill(self, inputs: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, n: int, b: int) -> None:
        assert self.inputs is not None and self.positions is not None, "prepare() makes the buffers"
        self.inputs[:n].copy_(inputs)
        self.inputs[n:b].zero_()
        self.positions[..., :n].copy_(positions)
        self.positions[..., n:b].zero_()
        self.slots[:n].copy_(meta.slot_mapping)
        self.slots[n:b].fill_(self.scratch_slot)  # padding rows write the scratch block...
        width = meta.tables.shape[1]
        self.tables[:n, :width].copy_(meta.tables)
        self.tables[n:b].fill_(self.scratch_block)
        self.ctx_lens[:n].copy_(meta.ctx_lens)
        self.ctx_lens[n:b].fill_(1)  # ...and attend to its first slot only

    def _forward(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.inputs is not None and self.positions is not None
        return self.forward(self.inputs[:b], self.positions[..., :b], self.metas[b])

    def _record(self, b: int) -> None:
        """Capture bucket ``b``'s graph, after a warm-up run, on a side stream (as torch asks).
        A failed capture is ended and its error raised, with the thread back on its own stream
        (``torch.cuda.graph`` would leave it on the capture stream when capture_end raises)."""
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            self._forward(b)
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                outputs = self._forward(b)
            except BaseException:
                _abandon(graph)
                raise
            graph.capture_end()
        torch.cuda.current_stream().wait_stream(stream)
        self.pool = graph.pool()
        self.graphs[b], self.outputs[b] = graph, outputs


def _on(device: torch.device) -> Any:
    """The card's context (streams and graphs are made on the current card, which a replica on
    cuda:N has not made its own); nothing on a CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _abandon(graph: Any) -> None:
    """End a capture whose captured code failed (the capture is invalid: ending it may fail too)."""
    try:
        graph.capture_end()
    except RuntimeError as err:
        log.debug("ending a failed capture: %s", err)
    torch.cuda.synchronize()
