"""Tiny text checkpoints whose attention differs from Llama's, for the paged attention's tests:
a sliding window (Mistral), alternating local/global layers with attention and final logit
softcapping and a query scale that is not head_dim ** -0.5 (Gemma 2), and Llama 3's rope
scaling with tied embeddings; Qwen3's per-head q/k norms, Qwen3-MoE's routed experts, and
Gemma 3's local/global layers with a rope base per layer type and q/k norms. Windows are
shorter than the test prompts and the caps small, so that getting any of them wrong changes
tokens (or, for the monotonic final cap, logprobs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omnistage.models.tokenizer import build_tokenizer


def _common(tok: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, initializer_range=0.2,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)


def _save(model: Any, tok: Any, out: Path) -> None:
    from transformers import GenerationConfig
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)


def build_mistral(out: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM
    tok = build_tokenizer()
    config = MistralConfig(**_common(tok), num_hidden_layers=2, sliding_window=12, tie_word_embeddings=False)
    _save(MistralForCausalLM(config), tok, out)


def build_gemma2(out: Path) -> None:
    """head_dim 16 but query_pre_attn_scalar 64 (scale 1/8, not 1/4); layers local, global,
    local, global with an 8-token window. Untied, unlike real Gemma 2: with random weights and
    the input embedding scaled by sqrt(hidden), a tied head repeats its last token forever."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    tok = build_tokenizer()
    config = Gemma2Config(**_common(tok), num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=64,
                          sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2,
                          attn_logit_softcapping=3.0, final_logit_softcapping=5.0, tie_word_embeddings=False)
    _save(Gemma2ForCausalLM(config), tok, out)


def build_llama3(out: Path) -> None:
    """Llama 3 rope scaling with an original context of 32, so that it rescales frequencies the
    test prompts use; the output head is the embedding table."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = build_tokenizer()
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    config = LlamaConfig(**_common(tok), num_hidden_layers=2, rope_parameters=rope, tie_word_embeddings=True)
    _save(LlamaForCausalLM(config), tok, out)


def build_qwen3(out: Path) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tok = build_tokenizer()
    config = Qwen3Config(**_common(tok), num_hidden_layers=2, head_dim=16, tie_word_embeddings=False)
    _save(Qwen3ForCausalLM(config), tok, out)


def build_qwen3_moe(out: Path) -> None:
    """4 experts, 2 routed per token, every layer sparse: a token's output depends on which
    experts its router picks, so mixing up rows of a batch changes tokens."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    tok = build_tokenizer()
    config = Qwen3MoeConfig(**_common(tok), num_hidden_layers=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                            moe_intermediate_size=64, norm_topk_prob=True, tie_word_embeddings=False)
    _save(Qwen3MoeForCausalLM(config), tok, out)


def build_gemma3(out: Path) -> None:
    """Gemma 3 text: layers local, global, local, global with an 8-token window; local layers
    use rope base 10k, global ones 1M (the released configs' values). Untied, as the tiny
    Gemma 2 is (see there)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    tok = build_tokenizer()
    config = Gemma3TextConfig(**_common(tok), num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=8, layer_types=["sliding_attention", "full_attention"] * 2,
                              tie_word_embeddings=False)
    _save(Gemma3ForCausalLM(config), tok, out)
