"""Tiny Qwen2.5-Omni: thinker (text + audio + vision), talker (codec tokens) and token2wav (DiT +
BigVGAN), with speakers (``spk_dict.pt``). Saved whole and each sub-model in its own directory
(``thinker/``, ``talker/``, ``token2wav/``); the audio feature extractor is under ``audio/``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omnistage.models.tokenizer import build_tokenizer, chat_template

OMNI_TOKENS = ["<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|tts_text_pad|>", "<|tts_text_bos|>",
               "<|tts_text_eos|>", "<|tts_bos_single|>"]
CODEC = {"vocab": 64, "pad": 60, "bos": 61, "eos": 62, "mask": 63}  # codes 0-59, then the specials
ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}


def _media_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|image_pad|>"],
                video_token_index=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                vision_end_token_id=ids["<|vision_end|>"], audio_start_token_id=ids["<|audio_bos|>"],
                audio_end_token_id=ids["<|audio_eos|>"])


def _thinker(vocab: int, ids: dict[str, int], user: int) -> dict[str, Any]:
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rope_parameters=ROPE, initializer_range=0.2)
    audio = dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, d_model=32,
                 max_source_positions=1500, n_window=100, output_dim=64, initializer_range=0.2)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  fullatt_block_indexes=[1], window_size=112, initializer_range=0.2)
    return dict(text_config=text, audio_config=audio, vision_config=vision, user_token_id=user, **_media_ids(ids))


def _talker(ids: dict[str, int]) -> dict[str, Any]:
    # The tts_text_* ids index the thinker's vocabulary (the talker embeds them with the thinker's
    # embedding table), as in the released model; codec ids index the talker's own.
    return dict(vocab_size=CODEC["vocab"], embedding_size=64, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16, rope_parameters=ROPE,
                tts_text_start_token_id=ids["<|tts_text_bos|>"], tts_text_end_token_id=ids["<|tts_text_eos|>"],
                tts_text_pad_token_id=ids["<|tts_text_pad|>"], tts_codec_start_token_id=CODEC["bos"],
                tts_codec_end_token_id=CODEC["eos"], tts_codec_pad_token_id=CODEC["pad"],
                tts_codec_mask_token_id=CODEC["mask"], initializer_range=0.2, **_media_ids(ids))


def _token2wav() -> dict[str, Any]:
    dit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ff_mult=2, emb_dim=16, head_dim=16,
               block_size=24, look_ahead_layers=[1], look_backward_layers=[0], num_embeds=CODEC["vocab"], mel_dim=16,
               enc_emb_dim=16, enc_dim=16, enc_channels=[16, 16, 16, 16, 48], enc_kernel_sizes=[5, 3, 3, 3, 1],
               enc_dilations=[1, 2, 3, 4, 1], enc_attention_channels=8, enc_se_channels=8)
    vocoder = dict(mel_dim=16, upsample_initial_channel=128, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                   upsample_rates=[5, 3, 2, 2, 2, 2], upsample_kernel_sizes=[11, 7, 4, 4, 4, 4])
    return dict(dit_config=dit, bigvgan_config=vocoder)


def build_qwen2_5_omni(out: Path) -> None:
    from transformers import (GenerationConfig, Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration,
                              Qwen2VLImageProcessorPil, WhisperFeatureExtractor)
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": OMNI_TOKENS})
    ids = {t: tok.convert_tokens_to_ids(t) for t in OMNI_TOKENS + ["<|image_pad|>", "<|video_pad|>",
                                                                    "<|vision_start|>", "<|vision_end|>"]}
    config = Qwen2_5OmniConfig(thinker_config=_thinker(len(tok), ids, tok.convert_tokens_to_ids("<|im_start|>")),
                               talker_config=_talker(ids), token2wav_config=_token2wav(), enable_audio_output=True)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    model.thinker.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    speakers = {"Chelsie": {"bos_token": ids["<|tts_bos_single|>"], "cond": torch.randn(16), "ref_mel": torch.randn(30, 16)},
                "Ethan": {"bos_token": ids["<|tts_bos_single|>"], "cond": torch.randn(16), "ref_mel": torch.randn(30, 16)}}
    model.save_pretrained(out)
    torch.save(speakers, out / "spk_dict.pt")
    for name in ("thinker", "talker", "token2wav"):
        getattr(model, name).save_pretrained(out / name)
    torch.save(speakers, out / "token2wav" / "spk_dict.pt")
    # The combined processor is not built (its video part needs torchvision). Its pieces: the
    # image processor at the root, the audio feature extractor under audio/ (both would write
    # preprocessor_config.json).
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(out / "audio")
    tok.chat_template = chat_template(audio="<|audio_bos|><|AUDIO|><|audio_eos|>")
    tok.save_pretrained(out)
    tok.save_pretrained(out / "thinker")  # the thinker directory loads as a model of its own
