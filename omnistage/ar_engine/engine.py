"""The AR engine: schedule, run, sample, update, emit.

    engine = LLMEngine(model, tokenizer, EngineConfig(), max_seqs=64)
    engine.add(EngineRequest("r1", prompt_ids, SamplingParams(max_tokens=16, temperature=0)))
    while engine.has_work():
        for out in engine.step(): ...
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from omnistage.ar_engine.attention import ATTN_IMPLEMENTATION
from omnistage.ar_engine.block_manager import BlockManager
from omnistage.ar_engine.detokenize import IncrementalDetokenizer
from omnistage.ar_engine.graphs import GraphSettings
from omnistage.ar_engine.guided import GuideSpec, Guides
from omnistage.ar_engine.kernels import backend_for
from omnistage.ar_engine.runner import ModelRunner
from omnistage.ar_engine.sampling import Sampled, SamplingParams, sample_batch
from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.memory import CachePlan, plan_cache
from omnistage.ar_engine.scheduler import Scheduler
from omnistage.ar_engine.shape import shape_from_config
from omnistage.ar_engine.sequence import MediaSpan, Sequence, StepPlan
from omnistage.errors import RequestRejected


@dataclass
class EngineRequest:
    rid: str
    prompt: list[int]
    sampling: SamplingParams
    media: tuple[MediaSpan, ...] = ()
    mrope_positions: Any = None
    mrope_delta: int = 0
    # Prefill only: after the first token, keep the KV for ``export_kv`` instead of decoding on.
    hold: bool = False
    fed: Any = None  # per-position input embeddings from outside (sequence.FedInputs)
    # With hidden_states "all": this request wants every position's states, so it computes its
    # whole prompt (no cached prefix reused). Others keep no states and use the prefix cache.
    all_states: bool = True


@dataclass
class Prefilled:
    """A request whose prompt K/V were computed elsewhere (the prefill stage)."""

    request: EngineRequest
    first_token: int
    kv: torch.Tensor  # [layers, 2, prompt_len, kv_heads, head_dim]


class TokenOutput(NamedTuple):
    rid: str
    tokens: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[Sampled] = []
    hidden: torch.Tensor | None = None
    embeds: torch.Tensor | None = None  # input embeddings of the positions ``hidden`` covers ("all")
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    # Once finished, as vLLM splits a request's time here: added -> first scheduled (queue),
    # -> first token (prefill), -> last token (decode); seconds.
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _State:
    seq: Sequence
    detok: IncrementalDetokenizer | None
    text: str = ""  # all text so far (stop strings are searched here)
    sent: int = 0  # characters of ``text`` already emitted
    hidden: list[torch.Tensor] = field(default_factory=list)
    embeds: list[torch.Tensor] = field(default_factory=list)
    kept: int = 0  # positions whose states were kept (a recomputation after preemption repeats none)
    hold: bool = False
    added_at: float = field(default_factory=time.perf_counter)
    scheduled_at: float | None = None  # the first step that computed some of it
    first_token_at: float | None = None


class LLMEngine:
    def __init__(self, model: Any, tokenizer: Any, config: EngineConfig, max_seqs: int = 64, backend: Any = "auto",
                 media_encoder: Any = None, eos_ids: frozenset[int] | None = None, input_embeds: bool = False,
                 tp_size: int = 1, decode_graphs: str = "auto") -> None:
        """``max_seqs``: sequences per step; ``tokenizer`` None: no text (a model over codec
        tokens); ``eos_ids`` overrides the model's end-of-sequence ids; ``input_embeds`` (with
        hidden_states "all"): also keep each position's input embedding (what a talker needs);
        ``backend`` "auto": the attention kernels for the model's device (``kernels.backend_for``),
        None: the torch reference. ``tp_size`` > 1: ``model`` is rank 0's shard of a
        tensor-parallel model whose other ranks ``parallel.follow`` (torch.distributed is set up).
        ``decode_graphs``: "auto" (CUDA graphs for decode steps on a GPU, unless
        ``enforce_eager``), "off", or "eager" (their static buffers and padding, run eagerly)."""
        _check_attention(model)
        if backend == "auto":
            backend = backend_for(str(next(model.parameters()).device))
        self.config = config
        self.input_embeds = input_embeds
        self.tokenizer = tokenizer
        device = str(next(model.parameters()).device)
        graphs = _graph_settings(decode_graphs, config, max_seqs, device, tp_size, backend)
        self.cache = self._plan_cache(model, config, max_seqs, tp_size, graphs is not None and graphs.capture)
        self.blocks = BlockManager(self.cache.num_blocks, config.block_size, config.prefix_caching)
        self.scheduler = Scheduler(config, max_seqs, self.blocks)
        runner_class = ModelRunner
        if tp_size > 1:
            from omnistage.ar_engine.parallel import ParallelRunner
            runner_class = ParallelRunner
        if graphs is not None:
            graphs = graphs._replace(table_width=-(-self.cache.max_model_len // config.block_size))
        self.runner = runner_class(model, self.cache.num_blocks, config.block_size, backend=backend,
                                   media_encoder=media_encoder, tp_size=tp_size, graphs=graphs)
        self.eos_ids = _eos_ids(model, tokenizer) if eos_ids is None else eos_ids
        self.max_model_len = self.cache.max_model_len
        self.states: dict[str, _State] = {}
        self.imports: deque[Prefilled] = deque()
        self.pinned: dict[str, list[int]] = {}  # prefix blocks a probe's answer holds cached, by request
        self.max_seqs = max_seqs
        self.guides: Guides | None = None  # made by the first request with structured output
        self.matchers: dict[str, Any] = {}  # grammar matchers of requests with structured output
        self.off_grammar: set[str] = set()  # requests whose sampled token their grammar refused

    @staticmethod
    def _plan_cache(model: Any, config: EngineConfig, max_seqs: int, tp_size: int, graphs: bool) -> CachePlan:
        weight = next(model.parameters())
        shape = shape_from_config(model.config.to_dict(), weight.element_size(), tp_size)
        return plan_cache(config, shape, max_seqs, weight.device, graphs)

    # --- requests --------------------------------------------------------------------------
    def add(self, req: EngineRequest) -> None:
        if not req.prompt:
            raise RequestRejected("the prompt is empty", param="prompt")
        if len(req.prompt) >= self.max_model_len:
            raise RequestRejected(f"the prompt has {len(req.prompt)} tokens; this model and KV cache hold at most "
                                  f"{self.max_model_len - 1}", param="messages")
        if req.rid in self.states:
            raise RequestRejected(f"request id {req.rid!r} is already running")
        seq = _sequence(req)
        seq.reuse_prefix = not (self.config.hidden_states == "all" and req.all_states)
        self._guide(req.rid, req.sampling.guide)
        self.states[req.rid] = _State(seq, self._detokenizer(seq.prompt), hold=req.hold)
        self.scheduler.add(seq)

    def compile_guide(self, spec: GuideSpec) -> None:
        """Compile (and cache) a request's grammar now, so that a bad one is refused before it
        is added; RequestRejected if it cannot be compiled."""
        self._guides(spec).compile(spec)

    def _guides(self, spec: GuideSpec) -> Guides:
        if self.tokenizer is None:
            raise RequestRejected("this stage's model has no tokenizer to constrain", param=spec.param)
        if self.guides is None:
            vocab = self.runner.lm_head.out_features
            self.guides = Guides(self.tokenizer, vocab, sorted(self.eos_ids), self.max_seqs)
        return self.guides

    def _guide(self, rid: str, spec: GuideSpec | None, output: list[int] | tuple[int, ...] = ()) -> None:
        if spec is not None:
            self.matchers[rid] = self._guides(spec).matcher(spec, output)

    def _detokenizer(self, prompt: list[int]) -> IncrementalDetokenizer | None:
        return None if self.tokenizer is None else IncrementalDetokenizer(self.tokenizer, prompt)

    def add_prefilled(self, item: Prefilled) -> None:
        """Continue a request whose prompt was prefilled elsewhere; it joins when blocks allow."""
        req = item.request
        seq = _sequence(req)
        seq.output.append(item.first_token)
        self._guide(req.rid, req.sampling.guide, seq.output)
        self.states[req.rid] = _State(seq, self._detokenizer(seq.prompt))
        self.imports.append(item)

    def export_kv(self, rid: str) -> torch.Tensor:
        """K/V of a held request's prompt, [layers, 2, prompt_len, kv_heads, head_dim]; frees it."""
        state = self.states.pop(rid)
        seq = state.seq
        slots = self._slots(seq, len(seq.prompt))
        kv = self.runner.read_kv(slots)
        self.scheduler.finish(seq)
        self._unpin(rid)
        self._unguide(rid)
        return kv

    def _slots(self, seq: Sequence, n: int) -> torch.Tensor:
        pos = torch.arange(n)
        table = torch.tensor(seq.block_table, dtype=torch.long)
        bs = self.config.block_size
        return (table[pos // bs] * bs + pos % bs).to(self.runner.device)

    def _admit_imports(self) -> list[TokenOutput]:
        outs = []
        while self.imports:
            item = self.imports[0]
            state = self.states.get(item.request.rid)
            if state is None:  # aborted while waiting
                self.imports.popleft()
                continue
            seq = state.seq
            if not self.blocks.can_allocate(seq):
                break
            self.imports.popleft()
            self.blocks.allocate(seq)
            slots = self._slots(seq, len(seq.prompt))
            self.runner.write_kv(slots, item.kv)
            seq.num_computed = len(seq.prompt)
            self.scheduler.adopt(seq)
            outs.append(self._emit(seq, Sampled(item.first_token)))
        return outs

    def cached_media(self, req: EngineRequest, hold: bool = False) -> list[int]:
        """Indices of ``req.media`` whose positions the prefix cache holds right now; ``hold``:
        and keeps holding them until the request finishes or is aborted."""
        if hold:
            self._unpin(req.rid)
            covered, self.pinned[req.rid] = self.blocks.pin_prefix(_sequence(req))
        else:
            covered = self.blocks.cached_prefix_tokens(_sequence(req))
        return [i for i, span in enumerate(req.media) if span.start + span.length <= covered]

    def _unpin(self, rid: str) -> None:
        self.blocks.unpin(self.pinned.pop(rid, []))

    def _unguide(self, rid: str) -> None:
        self.matchers.pop(rid, None)
        self.off_grammar.discard(rid)

    def abort(self, rid: str) -> None:
        self._unpin(rid)
        self._unguide(rid)
        state = self.states.pop(rid, None)
        if state is not None:
            self.scheduler.finish(state.seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self.imports)

    # --- the step ------------------------------------------------------------------------------
    def step(self) -> list[TokenOutput]:
        imported = self._admit_imports()
        plan = self.scheduler.schedule()
        if not plan.chunks:
            return imported
        now = time.perf_counter()
        for chunk in plan.chunks:
            state = self.states[chunk.seq.rid]
            state.scheduled_at = state.scheduled_at or now
        samplers = [c.seq for c in plan.chunks if c.samples]
        guided = [(row, self.matchers[s.rid]) for row, s in enumerate(samplers) if s.rid in self.matchers]
        if guided:  # the grammars' masks fill while the forward runs
            assert self.guides is not None
            filled = self.guides.start([m for _, m in guided], [row for row, _ in guided])
        result = self.runner.run(plan)
        logits = result.logits
        if guided:
            logits = logits.float()
            self.guides.apply(filled, logits, [row for row, _ in guided])
        # (a history only where a penalty reads it: building every sequence's token list each step is O(length))
        picked = sample_batch(logits, [s.sampling for s in samplers],
                              [s.tokens if s.sampling.repetition_penalty != 1.0 else () for s in samplers],
                              [s.output for s in samplers])
        for row, matcher in guided:
            if not matcher.accept_token(picked[row].token):  # (only if every token was masked off)
                self.off_grammar.add(samplers[row].rid)
        self._keep_hidden(plan, result)
        grew = self.scheduler.update(plan, {s.rid: p.token for s, p in zip(samplers, picked)})
        by_rid = {s.rid: p for s, p in zip(samplers, picked)}
        return imported + [self._emit(seq, by_rid[seq.rid]) for seq in grew]

    def _keep_hidden(self, plan: StepPlan, result: Any) -> None:
        mode = self.config.hidden_states
        if mode == "none":
            return
        offset, rows = 0, iter(result.sample_rows)
        for chunk in plan.chunks:
            state = self.states[chunk.seq.rid]
            if mode == "all" and not chunk.seq.reuse_prefix:
                # Positions already kept (recomputed after a preemption) are not kept again.
                lo, hi = offset + max(0, state.kept - chunk.start), offset + chunk.length
                state.hidden.append(result.hidden[lo:hi])
                if self.input_embeds:
                    state.embeds.append(result.embeds[lo:hi])
                state.kept = max(state.kept, chunk.start + chunk.length)
            elif mode == "generated" and chunk.samples:
                row = next(rows)
                state.hidden.append(result.hidden[row:row + 1])
            offset += chunk.length

    def _emit(self, seq: Sequence, sampled: Sampled) -> TokenOutput:
        state = self.states[seq.rid]
        token, sp = sampled.token, seq.sampling
        stop_token = (token in self.eos_ids and not sp.ignore_eos) or token in sp.stop_token_ids \
            or seq.rid in self.off_grammar
        reason = None
        if not stop_token and state.detok is not None:
            state.text += state.detok.push(token)
        if stop_token:
            reason = "stop"
        elif (sp.max_tokens is not None and len(seq.output) >= sp.max_tokens) or len(seq) >= self.max_model_len:
            reason = "length"
        hit = sp.find_stop(state.text, max(0, state.sent - max((len(s) for s in sp.stop), default=0)))
        if hit is not None:
            state.text, reason = state.text[:hit], "stop"
        if reason is not None and hit is None and state.detok is not None:
            state.text += state.detok.flush()  # a trailing incomplete character, as decode() shows it
        visible = state.text if reason else sp.hold_back(state.text)
        delta, state.sent = visible[state.sent:], max(state.sent, len(visible))
        hidden = torch.cat(state.hidden) if state.hidden else None
        embeds = torch.cat(state.embeds) if state.embeds else None
        state.hidden, state.embeds = [], []
        now = time.perf_counter()
        state.first_token_at = state.first_token_at or now
        scheduled = state.scheduled_at or state.added_at
        times = (scheduled - state.added_at, state.first_token_at - scheduled, now - state.first_token_at) \
            if reason is not None else (0.0, 0.0, 0.0)
        out = TokenOutput(seq.rid, [token], delta, reason is not None, reason,
                          [sampled] if sp.logprobs is not None else [], hidden, embeds, len(seq.prompt),
                          seq.num_cached, len(seq.output), *times)
        if reason is not None:
            self.scheduler.finish(seq)
            self._unpin(seq.rid)
            self._unguide(seq.rid)
            del self.states[seq.rid]
        elif state.hold:
            self.scheduler.detach(seq)  # until export_kv hands the prompt's K/V over
        return out

    def stats(self) -> dict[str, float]:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_usage": self.blocks.usage(), "prefix_hit_rate": self.blocks.hits / max(1, self.blocks.queries)}


def _sequence(req: EngineRequest) -> Sequence:
    return Sequence(req.rid, list(req.prompt), req.sampling, req.media, req.mrope_positions, req.mrope_delta,
                    req.fed)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _check_attention(model: Any) -> None:
    """The model's language layers must call the paged attention: with another implementation
    they would attend over the step's own tokens only and decode wrong tokens, silently."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(f"the model's attention implementation is {config._attn_implementation!r}; the engine "
                         f"needs {ATTN_IMPLEMENTATION!r} (from_pretrained(..., attn_implementation=...) or "
                         "model.set_attn_implementation)")


def _graph_settings(mode: str, config: EngineConfig, max_seqs: int, device: str, tp_size: int,
                    backend: Any) -> GraphSettings | None:
    """The decode graphs' settings (their table width is set once the cache is planned), None:
    no static buffers (the mode, a CPU, enforce_eager, tensor parallelism, an unpacked backend)."""
    if mode not in ("auto", "off", "eager"):
        raise ValueError(f"decode_graphs is 'auto', 'off' or 'eager', not {mode!r}")
    capture = mode == "auto" and device.startswith("cuda") and not config.enforce_eager
    if tp_size > 1 or backend is None or not backend.packed or not (capture or mode == "eager"):
        return None
    return GraphSettings(capture, max_seqs, 0)
