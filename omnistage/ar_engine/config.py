"""The AR engine's settings, declared once: the engine and its scheduler read them, and the ar,
prefill and decode stage kinds take them as their YAML ``options`` (``graph.options.ArOptions``
extends this class). Pure data, no torch: validating a graph imports it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EngineConfig:
    """KV cache size, most specific first: ``num_blocks``; ``kv_cache_mb``; else
    ``memory_utilization`` of the device (see ``ar_engine.memory``). ``max_model_len``: the
    longest sequence (prompt + output) served, by default the model's own context length; a
    cache that cannot hold one such sequence is refused at start."""

    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None
    kv_cache_mb: int | None = None
    memory_utilization: float | None = None  # default: 0.9 of a GPU, 0.1 of the available RAM on a CPU
    max_model_len: int | None = None
    max_tokens_per_step: int = 2048  # the token budget of one step (prefill chunks plus decodes)
    chunked_prefill: bool = True  # a long prompt is computed over several steps, beside decodes
    short_prompt_tokens: int = 64  # waiting prompts this short are admitted before running prefills
    prefix_caching: bool = True
    # "generated": the last-layer state that produced each new token; "all": every position.
    hidden_states: Literal["none", "generated", "all"] = "none"
    # On a GPU, decode steps replay CUDA graphs (``graphs.py``); True runs every step eagerly
    # (debugging, as vLLM's --enforce-eager).
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        for name in ("block_size", "max_tokens_per_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("num_blocks", "kv_cache_mb", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.memory_utilization is not None and not 0 < self.memory_utilization <= 1:
            raise ValueError("memory_utilization must be in (0, 1]")
        if self.short_prompt_tokens < 0:
            raise ValueError("short_prompt_tokens must be >= 0")
