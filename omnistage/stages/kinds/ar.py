"""The ``ar`` kind: batched autoregressive generation over a transformers causal LM.

Requests are grouped into a batch (left-padded, one KV cache), prefilled together and then
decoded one token per engine step, so text streams out as it is produced. A batch runs until
all its requests finish; new requests start with the next batch.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from omnistage.errors import RequestRejected
from omnistage.graph.kinds import ArOptions
from omnistage.graph.plan import StagePlan
from omnistage.models.loading import checkpoint_dir, torch_dtype
from omnistage.stages.engine import StageOutput, StageRequest
from omnistage.stages.kinds.sampling import SamplingParams, sample


@dataclass
class _Seq:
    rid: str
    prompt: list[int]
    sampling: SamplingParams
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    finish_reason: str = ""


class ArEngine:
    def __init__(self, model: Any, tokenizer: Any, options: ArOptions, max_batch: int) -> None:
        self.model = model
        self.tok = tokenizer
        self.options = options
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids = frozenset(eos_ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.waiting: deque[_Seq] = deque()
        self.batch: list[_Seq] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None

    # --- requests -----------------------------------------------------------------------
    def add(self, request: StageRequest) -> None:
        prompt = self._tokenize(request.inputs)
        if len(prompt) > self.options.max_prompt_tokens:
            raise RequestRejected(f"prompt has {len(prompt)} tokens, more than this stage's limit of "
                                  f"{self.options.max_prompt_tokens}", param="messages")
        sampling = SamplingParams.from_request(request.params, self.options.max_tokens)
        self.waiting.append(_Seq(request.rid, prompt, sampling))

    def _tokenize(self, inputs: dict[str, Any]) -> list[int]:
        if "messages" in inputs:
            enc = self.tok.apply_chat_template(list(inputs["messages"]), add_generation_prompt=True, tokenize=True)
            ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
            return list(ids)
        return list(self.tok(inputs["prompt"])["input_ids"])

    def abort(self, rid: str) -> None:
        self.waiting = deque(s for s in self.waiting if s.rid != rid)
        for seq in self.batch:
            if seq.rid == rid:
                seq.done, seq.finish_reason = True, "abort"

    def has_work(self) -> bool:
        return bool(self.waiting) or any(not s.done for s in self.batch)

    # --- steps ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StageOutput]:
        if not any(not s.done for s in self.batch):
            self._start_batch()
            logits = self._prefill()
        else:
            logits = self._decode()
        return self._advance(logits)

    def _start_batch(self) -> None:
        self.batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]

    def _prefill(self) -> torch.Tensor:
        width = max(len(s.prompt) for s in self.batch)
        ids = torch.full((len(self.batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(self.batch), width), dtype=torch.long)
        for row, seq in enumerate(self.batch):
            ids[row, width - len(seq.prompt):] = torch.tensor(seq.prompt)
            mask[row, width - len(seq.prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self._cache = DynamicCache()
        self._mask = mask.to(self.device)
        self._positions = positions[:, -1:].to(self.device)
        out = self.model(input_ids=ids.to(self.device), attention_mask=self._mask,
                         position_ids=positions.to(self.device), past_key_values=self._cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[:, -1, :]

    def _decode(self) -> torch.Tensor:
        assert self._mask is not None and self._positions is not None
        last = torch.tensor([[s.tokens[-1] if s.tokens else self.pad_id] for s in self.batch], device=self.device)
        self._mask = torch.cat([self._mask, torch.ones((len(self.batch), 1), dtype=torch.long, device=self.device)], 1)
        self._positions = self._positions + 1
        out = self.model(input_ids=last, attention_mask=self._mask, position_ids=self._positions,
                         past_key_values=self._cache, use_cache=True)
        return out.logits[:, -1, :]

    def _advance(self, logits: torch.Tensor) -> list[StageOutput]:
        outs = []
        for row, seq in enumerate(self.batch):
            if seq.done:
                continue
            token = sample(logits[row].float(), seq.sampling, seq.prompt + seq.tokens, len(seq.tokens))
            outs.append(self._append(seq, token))
        return outs

    def _append(self, seq: _Seq, token: int) -> StageOutput:
        seq.tokens.append(token)
        is_eos = token in self.eos_ids and not seq.sampling.ignore_eos
        full = self.tok.decode(seq.tokens[:-1] if is_eos else seq.tokens, skip_special_tokens=True)
        if is_eos:
            seq.done, seq.finish_reason = True, "stop"
        elif len(seq.tokens) >= seq.sampling.max_tokens:
            seq.done, seq.finish_reason = True, "length"
        stop_at = seq.sampling.find_stop(full)
        if stop_at is not None:
            full, seq.done, seq.finish_reason = full[:stop_at], True, "stop"
        # Hold back a trailing partial UTF-8 character, and text that may begin a stop string,
        # until the next token settles it: streamed text is never taken back.
        visible = full if seq.done else seq.sampling.hold_back(full.rstrip("\ufffd"))
        delta, seq.text = visible[len(seq.text):], visible
        out = StageOutput(seq.rid, ports={"text": delta, "tokens": [token]}, finished=seq.done)
        if seq.done:
            out.meta = {"prompt_tokens": len(seq.prompt), "completion_tokens": len(seq.tokens),
                        "finish_reason": seq.finish_reason}
        return out


def build(stage: StagePlan, device: str) -> ArEngine:
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(stage.model_dtype, device)).to(device).eval()
    return ArEngine(model, tokenizer, stage.options, stage.config.batching.max_batch)
