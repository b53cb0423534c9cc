"""Prefill/decode disaggregation: ``prefill`` computes a prompt's K/V and first token and hands
them to ``decode`` over the ``kv`` port (tensors above the threshold travel through shared
memory on one host); ``decode`` adopts the K/V into its own paged cache and generates the rest.
The tokens equal those of the colocated ``ar`` kind, including seeded sampling: the request's
random-generator state travels with the hand-off.
"""
from __future__ import annotations

from typing import Any

from omnistage.ar_engine.engine import EngineRequest, Prefilled
from omnistage.ar_engine.sequence import MediaSpan
from omnistage.connectors.messages import KvHandoff, WireSpan
from omnistage.encoders.vision import ImageItem
from omnistage.graph.plan import StagePlan
from omnistage.stages.worker.stage import StageOutput, StageRequest
from omnistage.stages.kinds.ar import ArStage, build_stage, to_stage_output


class PrefillStage(ArStage):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, EngineRequest] = {}

    def add(self, request: StageRequest) -> None:
        req = self.take_request(request)
        req.hold = True
        self.engine.add(req)
        self.pending[request.rid] = req

    def step(self) -> list[StageOutput]:
        outs = []
        for out in self.engine.step():
            req = self.pending.pop(out.rid)
            kv = None if out.finished else self.engine.export_kv(out.rid)
            rng = req.sampling.generator.get_state() if req.sampling.generator is not None else None
            handoff = KvHandoff(list(req.prompt), out.tokens[0], kv, out.finish_reason, out.text, rng,
                                [_span_to_wire(s) for s in req.media], req.mrope_positions, int(req.mrope_delta))
            # Usage (prompt and completion tokens) is reported once, by the decode stage.
            outs.append(StageOutput(out.rid, ports={"kv": handoff}, finished=True,
                                    meta={"prefill_cached_tokens": out.cached_tokens}))
        return outs

    def abort(self, rid: str) -> None:
        self.pending.pop(rid, None)
        self.engine.abort(rid)


class DecodeStage(ArStage):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finished_early: list[StageOutput] = []

    def add(self, request: StageRequest) -> None:
        handoff: KvHandoff = request.inputs["kv"]
        sampling = self.sampling(request.params)
        if handoff.rng is not None:
            sampling.rng().set_state(handoff.rng)
        if handoff.kv is None:  # the request ended with its first token
            self.finished_early.append(StageOutput(
                request.rid, ports={"text": handoff.text, "tokens": [handoff.first]}, finished=True,
                meta={"finish_reason": handoff.finish_reason, "completion_tokens": 1}))
            return
        req = EngineRequest(request.rid, handoff.prompt, sampling, tuple(_span_from_wire(s) for s in handoff.media),
                            handoff.mrope_positions, handoff.mrope_delta)
        self.engine.add_prefilled(Prefilled(req, handoff.first, handoff.kv))

    def step(self) -> list[StageOutput]:
        early, self.finished_early = self.finished_early, []
        return early + [to_stage_output(out, self.tok) for out in self.engine.step()]

    def abort(self, rid: str) -> None:
        self.finished_early = [o for o in self.finished_early if o.rid != rid]
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return bool(self.finished_early) or self.engine.has_work()


def _span_to_wire(span: MediaSpan) -> WireSpan:
    pixels = getattr(span.source, "pixel_values", None) if span.embeds is None else None
    return WireSpan(span.start, span.length, span.content_hash, span.embeds,
                    list(span.grid_thw) if span.grid_thw is not None else None, pixels, span.offset,
                    getattr(span.source, "tokens", span.length))


def _span_from_wire(wire: WireSpan) -> MediaSpan:
    grid = tuple(wire.grid) if wire.grid is not None else None
    source = None
    if wire.pixels is not None:
        source = ImageItem(None, grid, wire.tokens, wire.hash, _pixels=wire.pixels)
    return MediaSpan(wire.start, wire.length, wire.hash, wire.embeds, grid, source, wire.offset)


def build_prefill(stage: StagePlan, device: str) -> ArStage:
    return build_stage(PrefillStage, stage, device)


def build_decode(stage: StagePlan, device: str) -> ArStage:
    return build_stage(DecodeStage, stage, device)
