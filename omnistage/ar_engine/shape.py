"""The sizes a KV cache and a step's activations follow, from a model's config.json (a mapping:
no torch, no transformers; the GPU budget reads it before any worker starts, the engine when
it sizes its cache)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from omnistage.ar_engine.features import text_config


def bucket_sizes(max_seqs: int) -> tuple[int, ...]:
    """The decode graphs' batch sizes: 1, 2, 4, then multiples of 8, up to the first at or past
    ``max_seqs``."""
    sizes = [1, 2, 4, *range(8, max(max_seqs, 8) + 8, 8)]
    return (*(b for b in sizes if b < max_seqs), next(b for b in sizes if b >= max_seqs))


class ModelShape(NamedTuple):
    """What sizes a cache and a step's activations, from the model's (text) config."""

    layers: int
    kv_heads: int
    head_dim: int
    itemsize: int  # bytes per weight / cache element
    context_len: int  # max_position_embeddings
    heads: int = 1
    hidden: int = 0
    intermediate: int = 0
    vocab: int = 0

    def block_bytes(self, block_size: int) -> int:
        """Every layer's K and V of one block of ``block_size`` tokens."""
        return 2 * self.layers * self.kv_heads * self.head_dim * block_size * self.itemsize

    def activation_bytes(self, step_tokens: int, max_len: int, max_seqs: int) -> int:
        """A step's peak beside the cache, as the torch path computes it: MLP and projections of
        its tokens, a prefill chunk's float32 scores over its whole context, the logits."""
        tokens = min(step_tokens, max_len)
        mlp = tokens * (2 * self.intermediate + 6 * self.hidden) * self.itemsize
        return mlp + self.heads * tokens * max_len * 4 + max_seqs * self.vocab * 4

    def graph_bytes(self, max_seqs: int) -> int:
        """What the CUDA graphs of decode steps (``graphs.py``) keep in their memory pool: every
        bucket's outputs (logits and hidden states of its rows stay allocated between replays),
        and the largest step's MLP and projections (their attention makes no score matrix)."""
        sizes = bucket_sizes(max_seqs)
        outputs = sum(sizes) * (self.vocab + self.hidden) * self.itemsize
        return outputs + sizes[-1] * (2 * self.intermediate + 6 * self.hidden + self.vocab) * self.itemsize


def shape_from_config(config: Mapping[str, Any], itemsize: int, tp_size: int = 1) -> ModelShape:
    """One rank's shape (KV heads split over ``tp_size`` ranks) from a config.json's text part.
    (A talker's config names some activation sizes differently; those count as 0 where absent.)"""
    cfg = text_config(config)
    heads = cfg.get("num_attention_heads") or 1
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = (cfg.get("num_key_value_heads") or heads) // tp_size
    return ModelShape(cfg["num_hidden_layers"], kv_heads, head_dim, itemsize,
                      cfg.get("max_position_embeddings") or 1 << 20, heads, cfg.get("hidden_size") or 0,
                      cfg.get("intermediate_size") or 0, cfg.get("vocab_size") or 0)
