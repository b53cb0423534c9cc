"""Per-request sampling parameters and the batched token choice.

Temperature 0 is greedy. A request with a seed draws from its own generator, so the tokens it
gets do not depend on which other requests share its batch. A row's logits are adjusted in the
order vLLM applies it: ``logit_bias`` added, then ``repetition_penalty`` (over prompt and output,
as HF's), then OpenAI's ``frequency_penalty`` (times each token's count in the output so far) and
``presence_penalty`` (once for every token the output holds) subtracted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from omnistage.ar_engine.guided import GuideSpec, guide_from_request
from omnistage.errors import RequestRejected

MAX_TOP_LOGPROBS = 20


@dataclass
class SamplingParams:
    max_tokens: int | None  # None: until the end of the model's context (max_model_len)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # token id -> added to its logit
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; n: the chosen token's logprob and the top n
    suppress_token_ids: tuple[int, ...] = ()  # never sampled (set by a stage, not by requests)
    guide: GuideSpec | None = None  # a grammar the output must match (``guided``)
    generator: torch.Generator | None = field(default=None, repr=False)

    @classmethod
    def from_request(cls, params: Mapping[str, Any], default_max_tokens: int | None,
                     vocab_size: int | None = None) -> SamplingParams:
        """``vocab_size``: the model's logits width, which ``logit_bias`` token ids must be under."""
        get = params.get
        max_tokens = get("max_tokens")
        max_tokens = default_max_tokens if max_tokens is None else max_tokens
        stop = get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        sp = cls(max_tokens=max_tokens, temperature=_num(get("temperature", 1.0)), top_p=_num(get("top_p", 1.0)),
                 top_k=get("top_k", 0), min_p=_num(get("min_p", 0.0)),
                 repetition_penalty=_num(get("repetition_penalty", 1.0)),
                 presence_penalty=_num(get("presence_penalty") or 0.0),
                 frequency_penalty=_num(get("frequency_penalty") or 0.0),
                 logit_bias=_logit_bias(get("logit_bias"), vocab_size), seed=get("seed"), stop=stop,
                 stop_token_ids=tuple(get("stop_token_ids") or ()), ignore_eos=get("ignore_eos", False),
                 logprobs=get("logprobs"), guide=guide_from_request(params))
        sp.validate()
        return sp

    def validate(self) -> None:
        _check(self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1), "max_tokens must be an integer >= 1", "max_tokens")
        _check(_is_num(self.temperature) and 0 <= self.temperature <= 2, "temperature must be between 0 and 2", "temperature")
        _check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1]", "top_p")
        _check(_is_int(self.top_k) and self.top_k >= 0, "top_k must be an integer >= 0", "top_k")
        _check(_is_num(self.min_p) and 0 <= self.min_p <= 1, "min_p must be between 0 and 1", "min_p")
        _check(_is_num(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty must be > 0", "repetition_penalty")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_is_num(value) and -2 <= value <= 2, f"{name} must be a number between -2 and 2", name)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop must be a string or a list of non-empty strings", "stop")
        _check(all(_is_int(t) for t in self.stop_token_ids), "stop_token_ids must be integers", "stop_token_ids")
        _check(self.seed is None or _is_int(self.seed), "seed must be an integer", "seed")
        _check(isinstance(self.ignore_eos, bool), "ignore_eos must be true or false", "ignore_eos")
        _check(self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS),
               f"logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS}", "logprobs")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def adjusts_logits(self) -> bool:
        """Whether a bias or a penalty changes this request's logits."""
        return bool(self.logit_bias) or self.repetition_penalty != 1.0 or bool(self.presence_penalty) \
            or bool(self.frequency_penalty)

    def find_stop(self, text: str, start: int = 0) -> int | None:
        """Index of the earliest stop string in ``text`` at or after ``start``."""
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def hold_back(self, text: str) -> str:
        """``text`` without a trailing piece that could be the start of a stop string."""
        keep = len(text)
        for stop in self.stop:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    keep = min(keep, len(text) - k)
                    break
        return text[:keep]

    def rng(self) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator()
            if self.seed is not None:
                self.generator.manual_seed(self.seed)
            else:
                self.generator.seed()
        return self.generator


def _num(value: Any) -> Any:
    return float(value) if _is_num(value) else value


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise RequestRejected(message, param=param)


def _logit_bias(value: Any, vocab_size: int | None) -> dict[int, float]:
    """OpenAI's ``logit_bias``: token ids (JSON keys are strings) -> a bias between -100 and 100."""
    if value is None:
        return {}
    _check(isinstance(value, Mapping), "logit_bias must map token ids to numbers", "logit_bias")
    bias = {}
    for key, amount in value.items():
        token = int(key) if isinstance(key, str) and key.isdigit() else key
        _check(_is_int(token) and token >= 0 and (vocab_size is None or token < vocab_size),
               f"logit_bias key {key!r} is not a token id of this model"
               + (f" (0 to {vocab_size - 1})" if vocab_size else ""), "logit_bias")
        _check(_is_num(amount) and -100 <= amount <= 100, f"logit_bias value for {key!r} must be between -100 and 100",
               "logit_bias")
        bias[token] = float(amount)
    return bias


class Sampled(NamedTuple):
    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def sample_batch(logits: torch.Tensor, params: Sequence[SamplingParams], histories: Sequence[Sequence[int]],
                 outputs: Sequence[Sequence[int]] | None = None) -> list[Sampled]:
    """One token per row of ``logits`` ([rows, vocab], float32). ``histories``: each row's prompt
    and output tokens (read by ``repetition_penalty``); ``outputs``: its output tokens (read by the
    frequency and presence penalties)."""
    outputs = outputs if outputs is not None else [()] * len(params)
    logits = logits.float()
    if any(sp.suppress_token_ids for sp in params):
        logits = logits.clone()
        for row, sp in enumerate(params):
            logits[row, list(sp.suppress_token_ids)] = float("-inf")
    if all(sp.greedy and sp.logprobs is None and not sp.adjusts_logits for sp in params):
        return [Sampled(t) for t in torch.argmax(logits, dim=-1).tolist()]  # the common fast path
    return [_sample_row(_adjusted(logits[row], sp, history, output) if sp.adjusts_logits else logits[row], sp)
            for row, (sp, history, output) in enumerate(zip(params, histories, outputs))]


def _adjusted(logits: torch.Tensor, sp: SamplingParams, history: Sequence[int], output: Sequence[int]) -> torch.Tensor:
    """One row's logits after its bias and penalties (see the module docstring)."""
    logits = logits.clone()
    if sp.logit_bias:
        ids = torch.tensor(list(sp.logit_bias), dtype=torch.long, device=logits.device)
        logits[ids] += torch.tensor(list(sp.logit_bias.values()), dtype=logits.dtype, device=logits.device)
    if sp.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / sp.repetition_penalty, picked * sp.repetition_penalty)
    if (sp.frequency_penalty or sp.presence_penalty) and output:
        counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=logits.numel()).to(logits)
        logits -= sp.frequency_penalty * counts + sp.presence_penalty * (counts > 0).to(logits)
    return logits


def _sample_row(logits: torch.Tensor, sp: SamplingParams) -> Sampled:
    if sp.greedy:
        token = int(torch.argmax(logits))
    else:
        token = int(torch.multinomial(_filtered_probs(logits, sp).cpu(), 1, generator=sp.rng()))
    if sp.logprobs is None:
        return Sampled(token)
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, sp.logprobs) if sp.logprobs else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist())) if top is not None else ()
    return Sampled(token, float(logp[token]), pairs)


def _filtered_probs(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
    logits = logits / sp.temperature
    if sp.top_k:
        kth = torch.topk(logits, min(sp.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sp.min_p > 0:
        probs = probs.masked_fill(probs < sp.min_p * probs.max(), 0.0)
    if sp.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > sp.top_p * sorted_probs.sum()
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    return probs
