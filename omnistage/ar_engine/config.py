"""The AR engine's settings, declared once: the engine and its scheduler read them, and the ar,
prefill and decode stage kinds take them as their YAML ``options`` (``graph.options.ArOptions``
extends this class). Pure data, no torch: validating a graph imports it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # KV blocks; default: as many as ``kv_cache_mb`` holds
    kv_cache_mb: int = 256
    max_tokens_per_step: int = 2048  # the token budget of one step (prefill chunks plus decodes)
    chunked_prefill: bool = True  # a long prompt is computed over several steps, beside decodes
    short_prompt_tokens: int = 64  # waiting prompts this short are admitted before running prefills
    prefix_caching: bool = True
    # "generated": the last-layer state that produced each new token; "all": every position.
    hidden_states: Literal["none", "generated", "all"] = "none"

    def __post_init__(self) -> None:
        for name in ("block_size", "kv_cache_mb", "max_tokens_per_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.num_blocks is not None and self.num_blocks <= 0:
            raise ValueError("num_blocks must be > 0")
        if self.short_prompt_tokens < 0:
            raise ValueError("short_prompt_tokens must be >= 0")
