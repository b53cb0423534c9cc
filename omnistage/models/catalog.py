"""Names of the tiny checkpoints ``omnistage tiny-models`` builds, and where they are cached.
Pure Python: no torch import (validating a graph reads it)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

# Bump when any builder changes, so cached checkpoints are rebuilt.
GENERATOR_VERSION = "7"


def cache_root() -> Path:
    """Where tiny checkpoints are built: ``$OMNISTAGE_CACHE`` (default ``~/.cache/omnistage``)."""
    base = os.environ.get("OMNISTAGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omnistage")
    return Path(base) / "tiny-models" / f"v{GENERATOR_VERSION}"


def is_built(name: str, root: Path | None = None) -> bool:
    return ((Path(root) if root is not None else cache_root()) / name / ".complete").exists()

TINY_MODELS: Mapping[str, str] = MappingProxyType({
    "qwen2": "Qwen2ForCausalLM, 2 layers, BPE tokenizer with a chat template",
    "llama": "LlamaForCausalLM, 2 layers, BPE tokenizer with a chat template",
    "mistral": "MistralForCausalLM, 2 layers, a 12-token sliding window",
    "gemma2": "Gemma2ForCausalLM, 4 layers: local (8-token window) and global, attention and final logit softcaps",
    "llama3": "LlamaForCausalLM with llama3 rope scaling and tied embeddings",
    "qwen3": "Qwen3ForCausalLM, 2 layers, per-head q/k RMSNorm",
    "qwen3-moe": "Qwen3MoeForCausalLM, 2 sparse layers of 4 experts, 2 routed per token",
    "gemma3": "Gemma3ForCausalLM (text), 4 layers: local (8-token window, rope base 10k) and global (1M)",
    "qwen2-vl": "Qwen2VLForConditionalGeneration with its PIL image processor",
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration: windowed and full-attention vision blocks",
    "sd": "StableDiffusionPipeline: UNet2DConditionModel, AutoencoderKL, CLIP text encoder",
    "sdxl": "StableDiffusionXLPipeline: two CLIP encoders, a UNet with text_time micro-conditioning, Euler",
    "sd3": "StableDiffusion3Pipeline: SD3Transformer2DModel (MMDiT), two CLIP encoders + T5, flow matching",
    "flux": "FluxPipeline (FLUX.1-dev layout): FluxTransformer2DModel with embedded guidance, CLIP + T5, flow matching",
    "qwen-image": "QwenImagePipeline: QwenImageTransformer2DModel, AutoencoderKLQwenImage, a Qwen2.5-VL text encoder",
    "wan": "WanPipeline (Wan 2.1 text-to-video): WanTransformer3DModel, AutoencoderKLWan, UMT5 encoder",
    "qwen2.5-omni": "Qwen2_5OmniForConditionalGeneration: thinker, talker and token2wav (each also in its own dir), speakers",
    "speecht5": "SpeechT5ForTextToSpeech with a SpeechT5HifiGan vocoder (vocoder/) and named voices",
    "whisper": "WhisperForConditionalGeneration (2-second window) with its feature extractor",
    "bert": "BertModel, 2 layers, with a sentence-transformers config (mean pooling, normalized)",
    "clip": "CLIPModel: text and image towers projected into one space, with its image processor",
})


def build_atomically(target: Path, build: Callable[[Path], None], stamp: str) -> None:
    """Run ``build`` into a scratch directory beside ``target``, mark it complete (``.complete``
    holding ``stamp``) and move it into place: a reader sees a whole checkpoint or none."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
