"""Tiny random-weight checkpoints of real architectures, written with ``save_pretrained``.

They load through exactly the code path a user's real checkpoint takes (``from_pretrained`` on
a directory). Generation is seeded, so the same version of this module writes the same
weights; results are cached under ``cache_root()`` and shared by processes via a file lock.
"""
from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from omnistage.models.catalog import GENERATOR_VERSION, TINY_MODELS, build_atomically, cache_root
from omnistage.models.tiny_diffusion import build_flux, build_qwen_image, build_sd, build_sd3, build_sdxl, build_wan
from omnistage.models.tiny_embed import build_bert, build_clip
from omnistage.models.tiny_omni import build_qwen2_5_omni
from omnistage.models.tiny_parts import QWEN2_5_VISION, text_config_kwargs, vl_model
from omnistage.models.tiny_speech import build_speecht5
from omnistage.models.tiny_text import (build_gemma2, build_gemma3, build_llama3, build_mistral,
                                        build_qwen3, build_qwen3_moe)
from omnistage.models.tokenizer import build_tokenizer

SEED = 1234


def ensure_tiny(name: str, root: Path | None = None) -> Path:
    """Directory of tiny model ``name``, building it once (safe across concurrent processes)."""
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {name!r}; available: {', '.join(TINY_MODELS)}")
    root = Path(root) if root is not None else cache_root()
    target = root / name
    if (target / ".complete").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / ".complete").exists():
            _build_into(name, target)
    return target


def _build_into(name: str, target: Path) -> None:
    def build(tmp: Path) -> None:
        torch.manual_seed(SEED)
        BUILDERS[name](tmp)
    build_atomically(target, build, GENERATOR_VERSION)


def build_qwen2(out: Path) -> None:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
    tok = build_tokenizer()
    config = Qwen2Config(**text_config_kwargs(len(tok)), eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_llama(out: Path) -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    tok = build_tokenizer(tools="llama")
    config = LlamaConfig(**text_config_kwargs(len(tok)), eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_qwen2_vl(out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.2)
    _build_vl(out, Qwen2VLConfig, Qwen2VLForConditionalGeneration, vision)


def build_qwen2_5_vl(out: Path) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    _build_vl(out, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, QWEN2_5_VISION)


def _build_vl(out: Path, config_cls: Any, model_cls: Any, vision: dict[str, Any]) -> None:
    """A Qwen2-VL-family checkpoint: the tiny text model with M-RoPE, ``vision``, the PIL image
    processor (images of 56x56 to 224x224 pixels) and the tokenizer, saved side by side as in a
    real checkpoint directory. The family's Processor itself is not built: its video processor
    needs torchvision, which is kept out of the dependencies."""
    from transformers import GenerationConfig, Qwen2VLImageProcessorPil
    tok = build_tokenizer()
    model = vl_model(tok, config_cls, model_cls, vision)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=224 * 224).save_pretrained(out)
    tok.save_pretrained(out)


# Whisper's control tokens (as its tokenizer names them), for a multilingual checkpoint: the
# decoder starts with <|startoftranscript|>, a language, a task and <|notimestamps|>; a prompt
# goes before them after <|startofprev|>. Timestamp tokens <|0.00|>, <|0.02|>, ... follow
# <|notimestamps|>, one per 20 ms of the window, as in Whisper's vocabulary.
WHISPER_LANGUAGES = ("en", "fr", "de", "es", "zh")
_WHISPER_CONTROL = ["<|startoftranscript|>", *(f"<|{lang}|>" for lang in WHISPER_LANGUAGES), "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
_WHISPER_WINDOW_S = 2


def whisper_tokenizer() -> Any:
    """Whisper's own tokenizer class over the tiny BPE vocabulary, with its control and timestamp
    tokens (what the ASR pipeline's word timestamps decode with)."""
    import json

    from tokenizers import AddedToken
    from transformers import WhisperTokenizer
    bpe = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    tok = WhisperTokenizer(vocab=bpe["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                        for m in bpe["merges"]], model_max_length=448)
    tok.add_special_tokens({"additional_special_tokens": _WHISPER_CONTROL})
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(_WHISPER_WINDOW_S * 50 + 1)]
    tok.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False) for t in stamps])
    tok.pad_token = tok.eos_token
    return tok


def build_whisper(out: Path) -> None:
    """Multilingual Whisper with a 2-second window (Whisper wants exactly 2 * max_source_positions
    mel frames): language and task tokens, language detection, prompts, timestamp tokens, and
    alignment heads (cross-attention heads that word timestamps are read from)."""
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration
    tok = whisper_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in _WHISPER_CONTROL}
    sot = ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                           decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=_WHISPER_WINDOW_S * 50,
                           max_target_positions=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                           eos_token_id=tok.eos_token_id, decoder_start_token_id=sot, init_std=0.2)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id, is_multilingual=True,
        lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in WHISPER_LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50, begin_suppress_tokens=[tok.eos_token_id], suppress_tokens=[],
        alignment_heads=[[1, 0], [1, 1], [1, 2], [1, 3]])
    model.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80, chunk_length=_WHISPER_WINDOW_S).save_pretrained(out)
    tok.save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "whisper": build_whisper,
    "bert": build_bert,
    "clip": build_clip,
    "qwen2": build_qwen2,
    "llama": build_llama,
    "mistral": build_mistral,
    "gemma2": build_gemma2,
    "llama3": build_llama3,
    "qwen3": build_qwen3,
    "qwen3-moe": build_qwen3_moe,
    "gemma3": build_gemma3,
    "qwen2-vl": build_qwen2_vl,
    "qwen2.5-vl": build_qwen2_5_vl,
    "sd": build_sd,
    "sdxl": build_sdxl,
    "sd3": build_sd3,
    "flux": build_flux,
    "qwen-image": build_qwen_image,
    "wan": build_wan,
    "speecht5": build_speecht5,
    "qwen2.5-omni": build_qwen2_5_omni,
}
assert set(BUILDERS) == set(TINY_MODELS), "catalog and builders disagree"
