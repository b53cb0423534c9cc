"""Per-request sampling parameters and the token choice. Temperature 0 means greedy."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from omnistage.errors import RequestRejected


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    generator: torch.Generator | None = field(default=None, repr=False)

    @classmethod
    def from_request(cls, params: Mapping[str, Any], default_max_tokens: int) -> SamplingParams:
        max_tokens = params.get("max_tokens")
        max_tokens = default_max_tokens if max_tokens is None else max_tokens
        temperature = params.get("temperature", 1.0)
        top_p = params.get("top_p", 1.0)
        top_k = params.get("top_k", 0)
        stop = params.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        _check(isinstance(max_tokens, int) and max_tokens >= 1, "max_tokens must be an integer >= 1", "max_tokens")
        _check(isinstance(temperature, (int, float)) and 0 <= temperature <= 2, "temperature must be between 0 and 2", "temperature")
        _check(isinstance(top_p, (int, float)) and 0 < top_p <= 1, "top_p must be in (0, 1]", "top_p")
        _check(isinstance(top_k, int) and top_k >= 0, "top_k must be an integer >= 0", "top_k")
        _check(all(isinstance(s, str) and s for s in stop), "stop must be a string or a list of non-empty strings", "stop")
        seed = params.get("seed")
        _check(seed is None or isinstance(seed, int), "seed must be an integer", "seed")
        ignore_eos = params.get("ignore_eos", False)
        _check(isinstance(ignore_eos, bool), "ignore_eos must be true or false", "ignore_eos")
        return cls(max_tokens, float(temperature), float(top_p), top_k, seed, stop, ignore_eos)

    def find_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
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


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise RequestRejected(message, param=param)


def sample(logits: torch.Tensor, sp: SamplingParams, history: list[int], step: int) -> int:
    """Choose the next token from one row of logits. A seeded request draws from its own
    generator, so its tokens do not depend on what else is in the batch."""
    if sp.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / sp.temperature
    if sp.top_k:
        kth = torch.topk(logits, min(sp.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sp.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > sp.top_p
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
    if sp.generator is None:
        sp.generator = torch.Generator()
        if sp.seed is not None:
            sp.generator.manual_seed(sp.seed)
        else:
            sp.generator.seed()
    return int(torch.multinomial(probs.cpu(), 1, generator=sp.generator))
