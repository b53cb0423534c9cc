"""Config features that change a model's attention or logits and that the AR engine does not
implement, read from a checkpoint's config.json. Pure Python, no torch: validating a graph
imports it, to refuse such a checkpoint before any process starts.

What was checked (transformers 5.x, every config key the attention or the final logits of
Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3 read, and the families named below):

- implemented, not listed: ``sliding_window`` (with Qwen2/3's ``use_sliding_window``,
  ``max_window_layers`` and ``layer_types`` choosing which layers slide; the attention receives
  the result per layer), ``attn_logit_softcapping``, ``final_logit_softcapping``,
  ``query_pre_attn_scalar`` (it arrives as ``scaling``), ``head_dim``, ``attention_bias``,
  Qwen3/Gemma 3 q/k norms, and rope types whose frequencies depend on the position only
  (default, linear, llama3, yarn, Gemma 3's per-layer-type parameters): transformers' own
  rotary embedding runs inside the decoder the engine calls;
- ignored at inference: ``attention_dropout``, ``resid_pdrop``, ``embd_pdrop``;
- listed: the checks in ``CHECKS``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Config = Mapping[str, Any]

# The layer kinds the paged attention runs: causal, with or without a window.
LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def text_config(config: Config) -> Config:
    """The text model's part of a config.json: itself, ``text_config`` (vision-language models),
    or ``thinker_config.text_config`` (Qwen2.5-Omni)."""
    if "thinker_config" in config:
        return config["thinker_config"]["text_config"]
    return config.get("text_config") or config


def _chunked_attention(cfg: Config) -> str | None:
    # Llama 4 reads attention_chunk_size in its mask only (the attention function never sees
    # it), and its config defaults it to 8192 when the key is absent.
    default = 8192 if cfg.get("model_type") == "llama4_text" else None
    if cfg.get("attention_chunk_size", default) is not None:
        return "attention_chunk_size (chunked local attention, Llama 4)"
    return None


def _attention_sinks(cfg: Config) -> str | None:
    # gpt-oss always has learned sinks (a parameter, not a config key): the attention gets s_aux.
    return "attention sinks (gpt-oss s_aux)" if cfg.get("model_type") == "gpt_oss" else None


def _bidirectional(cfg: Config) -> str | None:
    if cfg.get("use_bidirectional_attention"):
        return "use_bidirectional_attention (non-causal attention, Gemma 2/3)"
    return None


def _layer_types(cfg: Config) -> str | None:
    other = sorted(set(cfg.get("layer_types") or ()) - LAYER_TYPES)
    return f"layer_types {', '.join(other)} (only full and sliding attention layers)" if other else None


def _rope_types(cfg: Config) -> list[dict[str, Any]]:
    """Rope parameter sets: ``rope_parameters`` (transformers 5) or ``rope_scaling`` (older
    files); Gemma 3 keeps one set per layer type."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    nested = [value for value in rope.values() if isinstance(value, dict)]
    return nested or [rope]


def _batch_dependent_rope(cfg: Config) -> str | None:
    """Dynamic NTK and LongRoPE pick frequencies from the largest position in the forward call;
    the engine packs many sequences into one call, so a sequence's result would depend on
    what else is in its step (and dynamic NTK also on earlier steps)."""
    for rope in _rope_types(cfg):
        kind = rope.get("rope_type", rope.get("type"))
        if kind in ("su", "yarn") and cfg.get("model_type") == "phi3":
            kind = "longrope"  # Phi-3's config renames these, as transformers' Phi3Config does
        if kind is not None and "dynamic" in kind:
            return f"rope type {kind} (frequencies depend on the longest sequence in a step)"
        if kind == "longrope":
            original = rope.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
            if original is None or cfg.get("max_position_embeddings", 0) > original:
                return "rope type longrope beyond original_max_position_embeddings (frequencies depend on the " \
                       "longest sequence in a step)"
    return None


# Final logit scalings applied in XForCausalLM.forward, which the runner skips (it calls the
# decoder and lm_head): key, family, its default by model_type where the key may be absent.
FINAL_LOGIT_SCALES = (("logit_scale", "Cohere", {"cohere": 0.0625, "cohere2": 0.0625}),
                      ("logits_scaling", "Granite", {}))


def _final_logit_scale(cfg: Config) -> str | None:
    for key, family, defaults in FINAL_LOGIT_SCALES:
        value = cfg.get(key, defaults.get(cfg.get("model_type"), 1.0))
        if value is not None and value != 1:
            return f"{key} (final logit scaling, {family})"
    return None


def _vision_bidirectional(config: Config) -> str | None:
    # Gemma 3's vision-language model lets image tokens attend to each other both ways.
    if config.get("model_type") == "gemma3" and "vision_config" in config:
        return "bidirectional attention within images (Gemma 3 vision)"
    return None


CHECKS: tuple[Callable[[Config], str | None], ...] = (
    _chunked_attention, _attention_sinks, _bidirectional, _layer_types, _batch_dependent_rope, _final_logit_scale,
)
WHOLE_CONFIG_CHECKS: tuple[Callable[[Config], str | None], ...] = (_vision_bidirectional,)


def unsupported_features(config: Config) -> list[str]:
    """What in ``config`` (a config.json as a dict) the engine would silently get wrong, one
    short string per feature; empty when it implements everything the model needs."""
    text = text_config(config)
    found = [check(text) for check in CHECKS] + [check(config) for check in WHOLE_CONFIG_CHECKS]
    return [feature for feature in found if feature is not None]
