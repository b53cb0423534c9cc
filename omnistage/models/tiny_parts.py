"""Pieces the tiny checkpoints share: the tiny text model's size and a tiny Qwen2-VL-family model."""
from __future__ import annotations

from typing import Any


def text_config_kwargs(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                tie_word_embeddings=False, initializer_range=0.2)


# Qwen2.5-VL: 3 vision blocks, the middle one full attention and the others windowed over 56x56
# pixels (2x2 merged patches), so that images larger than one window (the tests' up to 224x224)
# are split into windows and reordered back; a real checkpoint's windows are 112.
QWEN2_5_VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                      tokens_per_second=2, initializer_range=0.2)


def vl_model(tok: Any, config_cls: Any, model_cls: Any, vision: dict[str, Any]) -> Any:
    """A tiny Qwen2-VL-family model (random weights) over the tiny tokenizer ``tok``."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = dict(text_config_kwargs(len(tok)), rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                "mrope_section": [2, 3, 3]},
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    config = config_cls(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                        vision_end_token_id=ids["<|vision_end|>"])
    return model_cls(config).eval()
