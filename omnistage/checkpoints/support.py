"""Which checkpoints each stage kind runs, checked at validate time from the checkpoint's config
alone (no weights, no torch): an architecture a kind has not been built and tested for is refused
before any worker starts, naming the model, its architecture and what the kind supports.

A checkpoint's architecture is ``architectures[0]`` of its ``config.json`` (transformers) or the
``_class_name`` of its ``model_index.json`` (diffusers pipelines).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from omnistage.ar_engine.features import unsupported_features
from omnistage.checkpoints.files import read_json
from omnistage.checkpoints.packaged import is_converted, parse_packaged
from omnistage.checkpoints.refs import parse_tiny

# Causal LMs whose attention and logits the paged engine reproduces (tested against HF generate).
TEXT_LMS = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Gemma2ForCausalLM",
                      "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Gemma3ForCausalLM"})
# Families whose transformers tensor-parallel plan (heads and MLP columns split, row-parallel
# outputs all-reduced) the engine runs, tested equal to one device.
TENSOR_PARALLEL = frozenset({"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"})
VISION_LMS = frozenset({"Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"})
OMNI = "Qwen2_5OmniForConditionalGeneration"  # the released single-directory checkpoint
OMNI_THINKER = "Qwen2_5OmniThinkerForConditionalGeneration"
DIFFUSION_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                                 "FluxPipeline", "QwenImagePipeline", "WanPipeline"})

# Checkpoints that hold several sub-models, each loaded on its own (``models.<name>.component``):
# component -> the architecture it is.
COMPONENTS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    OMNI: MappingProxyType({"thinker": OMNI_THINKER, "talker": "Qwen2_5OmniTalkerForConditionalGeneration",
                            "token2wav": "Qwen2_5OmniToken2WavModel"}),
})

# Embedding models: encoders, and decoders (Qwen3-Embedding is a Qwen3ForCausalLM) whose last token's
# state is the vector (read through AutoModel: the base model without its LM head); CLIP for text
# and images in one space.
EMBEDDERS = frozenset({"BertModel", "Qwen2Model", "Qwen2ForCausalLM", "Qwen3Model", "Qwen3ForCausalLM", "CLIPModel"})
_GENERATORS = TEXT_LMS | VISION_LMS | {OMNI_THINKER}
SUPPORTED: Mapping[str, frozenset[str]] = MappingProxyType({
    "ar": _GENERATORS,
    "prefill": _GENERATORS,
    "decode": _GENERATORS,
    "encode": VISION_LMS | {OMNI_THINKER, "WhisperForConditionalGeneration"},
    "text_encode": DIFFUSION_PIPELINES,
    "diffusion": DIFFUSION_PIPELINES,
    "vae_decode": DIFFUSION_PIPELINES,
    "tts": frozenset({"SpeechT5ForTextToSpeech"}),
    "transcribe": frozenset({"WhisperForConditionalGeneration"}),
    "embed": EMBEDDERS,
    "talker": frozenset({"Qwen2_5OmniTalkerForConditionalGeneration"}),
    "vocoder": frozenset({"Qwen2_5OmniToken2WavModel"}),
})


def architecture(ref: str) -> tuple[str, dict[str, Any]]:
    """(architecture, its config) of a resolved model reference. Raises ValueError when it has
    neither a transformers config nor a diffusers pipeline index (or cannot be reached)."""
    index = read_json(ref, "model_index.json")
    if index is not None and index.get("_class_name"):
        return str(index["_class_name"]), index
    config = read_json(ref, "config.json")
    if config is None:
        raise ValueError(f"{ref}: neither config.json nor model_index.json found; not a transformers or "
                         "diffusers checkpoint")
    names = config.get("architectures") or []
    if not names:
        raise ValueError(f"{ref}: config.json names no architecture (model_type {config.get('model_type')!r})")
    return str(names[0]), config


def component_architecture(ref: str, component: str | None) -> tuple[str, dict[str, Any]]:
    """(architecture, config) of ``ref`` or of its sub-model ``component``."""
    arch, config = architecture(ref)
    if component is None:
        return arch, config
    parts = COMPONENTS.get(arch, {})
    if component not in parts:
        have = f"its components are {', '.join(parts)}" if parts else "it holds no sub-models"
        raise ValueError(f"{ref}: no component {component!r} in a {arch} checkpoint; {have}")
    return parts[component], config


def check_model(kind: str, ref: str, component: str | None = None, tensor_parallel: int = 1) -> None:
    """Raise ValueError unless a stage of ``kind`` can run the checkpoint ``ref`` (resolved, as
    ``refs.resolve_model`` returns it), or its sub-model ``component``, over ``tensor_parallel``
    ranks. Kinds without a table (user python stages) take anything.
    A tiny or packaged checkpoint not built yet is not read (only supported ones are built)."""
    supported = SUPPORTED.get(kind)
    if supported is None:
        return
    tiny, packaged = parse_tiny(ref), parse_packaged(ref)
    if tiny is not None:
        from omnistage.models.catalog import is_built
        if not is_built(tiny.name):
            return
    if packaged is not None and not is_converted(packaged):
        return
    arch, config = component_architecture(ref, component)
    if arch not in supported:
        raise ValueError(f"{ref}: architecture {arch} is not supported by a {kind!r} stage; it runs "
                         f"{', '.join(sorted(supported))}")
    missing = unsupported_features(config) if kind in ("ar", "prefill", "decode") else []
    if missing:
        raise ValueError(f"{ref}: {arch} uses what the AR engine does not implement: {'; '.join(missing)}")
    if tensor_parallel > 1 and kind in ("ar", "prefill", "decode"):  # (the graph refuses it for other kinds)
        check_tensor_parallel(ref, arch, config, tensor_parallel)


def check_tensor_parallel(ref: str, arch: str, config: Mapping[str, Any], size: int) -> None:
    """A model split over ``size`` ranks: a family whose sharding is tested, heads that divide."""
    if arch not in TENSOR_PARALLEL:
        raise ValueError(f"{ref}: tensor_parallel runs {', '.join(sorted(TENSOR_PARALLEL))}, not {arch}")
    for name in ("num_attention_heads", "num_key_value_heads"):
        heads = config.get(name) or config["num_attention_heads"]
        if heads % size:
            raise ValueError(f"{ref}: tensor_parallel {size} does not divide its {name} ({heads})")
