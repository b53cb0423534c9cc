"""The ``options`` of each built-in stage kind: one frozen class per kind, parsed strictly from
YAML (unknown keys are refused). Pure data: no torch import."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from omnistage.ar_engine.config import EngineConfig
from omnistage.graph.params import ParamType
from omnistage.graph.strict import frozen_dict


@dataclass(frozen=True)
class ArOptions(EngineConfig):
    """An ar, prefill or decode stage: the AR engine's settings (``EngineConfig``: KV cache size,
    max_model_len, step budget, chunked prefill, prefix caching, hidden states), ``max_tokens``,
    the per-request default (None: the rest of the context, as OpenAI and vLLM do), and
    ``chat_template``, a Jinja template (inline, or a file path) replacing the tokenizer's, and
    ``media_cache_mb``: host memory for the embeddings of media items the stage has seen (from
    an encode stage or its own towers), by content hash, LRU; a probed image found there needs
    no encoder, and its KV positions past the last cached block are computed from them."""

    max_tokens: int | None = None
    chat_template: str | None = None
    media_cache_mb: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError("max_tokens must be > 0")
        if self.media_cache_mb < 0:
            raise ValueError("media_cache_mb must be >= 0 (0 turns the cache off)")
        template = self.chat_template
        if template is not None and "{{" not in template and "{%" not in template \
                and not Path(template).expanduser().is_file():
            raise ValueError(f"chat_template {template!r} is neither a Jinja template nor a file "
                             "(a relative path is taken from the directory the server starts in)")


@dataclass(frozen=True)
class EncodeOptions:
    """An encode stage: encoder cache size (0 turns it off) and per-step limits; media limits
    checked on input."""

    cache_mb: int = 256
    max_patches_per_step: int = 1 << 16
    max_image_pixels: int = 4096 * 4096
    max_image_bytes: int = 20 << 20

    def __post_init__(self) -> None:
        if self.cache_mb < 0:
            raise ValueError("cache_mb must be >= 0")
        for name in ("max_patches_per_step", "max_image_pixels", "max_image_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(frozen=True)
class StepCacheOptions:
    """A diffusion stage's default step caching (``diffusion/step_cache.py``); a request may
    override either field. ``threshold`` None: the model family's documented default."""

    policy: Literal["off", "reuse"] = "off"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0 <= self.threshold <= 10:
            raise ValueError("threshold must be between 0 and 10")


@dataclass(frozen=True)
class DiffusionOptions:
    """Diffusion-family stages (text_encode, diffusion, vae_decode).

    Request defaults (``height`` ... ``guidance_scale``, ``fps``) fall back to the model family's
    own when unset. ``max_*`` bound what a request may ask for. ``vae_batch`` caps the rows one
    VAE decode call takes (slicing); ``vae_tiling`` decodes outputs larger than the VAE's tile
    size tile by tile ("auto": on a GPU, where a large decode's activations could exhaust the
    card; a CPU stage then matches the plain pipeline at every size).
    """

    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    max_steps: int = 200
    max_pixels: int = 2048 * 2048
    max_frames: int = 257
    prompt_cache_mb: int = 64
    max_sequence_length: int | None = None
    vae_batch: int = 8
    vae_tiling: bool | Literal["auto"] = "auto"
    cache: StepCacheOptions = field(default_factory=StepCacheOptions)
    # A denoising step's width. "auto": per latent size, measured on this machine the first time
    # that size runs (the narrowest width near the best throughput, within the memory measured;
    # at most 4 x max_batch rows; a request is one row, two with classifier-free guidance). A
    # number: a compute budget in rows at the stage's default size (a larger image costs more in
    # proportion to its latent). 0: max_batch requests a step whatever their size.
    step_budget: float | Literal["auto"] = "auto"
    # LoRA adapters requests may name (``lora: {name, scale}``): name -> a diffusers/PEFT LoRA
    # safetensors file (or a directory holding one; a relative path from the graph file's
    # directory), checked at validate time, loaded on first use; at most max_loras stay.
    loras: Mapping[str, str] = field(default_factory=frozen_dict)
    max_loras: int = 4

    def __post_init__(self) -> None:
        for name in ("height", "width", "num_frames", "num_inference_steps", "fps", "max_sequence_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.step_budget != "auto" and not self.step_budget >= 0:  # (NaN too)
            raise ValueError("step_budget must be >= 0")
        for name in ("max_steps", "max_pixels", "max_frames", "vae_batch", "max_loras"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.prompt_cache_mb < 0:
            raise ValueError("prompt_cache_mb must be >= 0")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError("guidance_scale must be >= 0")


@dataclass(frozen=True)
class TtsOptions:
    """Text to speech. ``vocoder``/``voices`` default to ``vocoder/`` and ``voices.safetensors`` in
    the model directory; ``chunk_frames`` spectrogram frames are vocoded per streamed chunk with
    ``context_frames`` on each side; ``maxlenratio`` caps frames per input token."""

    vocoder: str | None = None
    voices: str | None = None
    default_voice: str = "alloy"
    chunk_frames: int = 32
    context_frames: int = 16
    maxlenratio: float = 20.0
    threshold: float = 0.5
    max_input_chars: int = 4096

    def __post_init__(self) -> None:
        for name in ("chunk_frames", "maxlenratio", "max_input_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.context_frames < 0:
            raise ValueError("context_frames must be >= 0")
        if not 0 < self.threshold < 1:
            raise ValueError("threshold must be between 0 and 1")


@dataclass(frozen=True)
class EmbedOptions:
    """Text embeddings. ``pooling`` "auto" and ``normalize`` unset: as the checkpoint says (its
    sentence-transformers config, else CLS for an encoder and the last token for a decoder,
    normalized); ``max_input_tokens``: the longest input (default: the checkpoint's
    ``max_seq_length``, else its positions); ``matryoshka``: whether ``dimensions`` may shorten a
    vector (default: the checkpoint's config)."""

    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    normalize: bool | None = None
    max_input_tokens: int | None = None
    matryoshka: bool | None = None

    def __post_init__(self) -> None:
        if self.max_input_tokens is not None and self.max_input_tokens <= 0:
            raise ValueError("max_input_tokens must be > 0")


@dataclass(frozen=True)
class TranscribeOptions:
    """Speech to text; ``max_tokens`` (per model window) is the per-request default. Audio longer
    than the model's window is transcribed window by window."""

    max_tokens: int = 128
    max_audio_bytes: int = 25 << 20
    max_audio_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_audio_bytes", "max_audio_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(frozen=True)
class TalkerOptions:
    """A Qwen2.5-Omni talker: codec tokens conditioned on a thinker's streamed states.

    Sampling defaults are the reference ``generate``'s (temperature 0 is greedy); ``max_tokens``
    caps codec tokens per reply; ``stop_token_ids`` default to the codec's end and pad tokens
    (``[]``: none, every reply is ``max_tokens`` long).
    ``thinker`` is the thinker checkpoint whose embedding rows the talker needs (default: the
    ``thinker/`` directory beside the talker's, else the full checkpoint above it).
    ``reference_unpadded`` conditions the talker as the reference ``generate`` does for one
    unpadded request: without the codec pad/start embeddings at the two positions after the
    prompt and with 1-D positions (see omni/reply.py); by default the talker gets both, as the
    model was built to (and as the reference does for a padded batch).
    """

    max_tokens: int = 4096
    temperature: float = 0.9
    top_k: int = 40
    top_p: float = 0.8
    repetition_penalty: float = 1.05
    stop_token_ids: tuple[int, ...] | None = None
    default_voice: str = "Chelsie"
    thinker: str | None = None
    reference_unpadded: bool = False
    block_size: int = 16
    kv_cache_mb: int | None = None  # default: sized from memory, as an ar stage's (ar_engine.memory)
    max_model_len: int = 8192  # thinker prompt + codec tokens (at most the model's context)
    max_tokens_per_step: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_tokens", "block_size", "max_model_len", "max_tokens_per_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.kv_cache_mb is not None and self.kv_cache_mb <= 0:
            raise ValueError("kv_cache_mb must be > 0")
        if not 0 <= self.temperature <= 2:
            raise ValueError("temperature must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")


@dataclass(frozen=True)
class VocoderOptions:
    """Codec tokens to waveform (Qwen2.5-Omni token2wav: a flow-matching DiT, then BigVGAN).

    Audio is made in chunks of ``chunk_codes`` codec tokens as they arrive (the first chunk of a
    reply ``first_chunk_codes``, smaller so that audio starts sooner), each with up to
    ``left_context_codes`` earlier tokens as context; ``chunk_codes: 0`` makes the whole reply at
    once when the talker has finished (the reference's output, at the cost of first-audio latency).
    ``num_steps``, ``guidance_scale`` and ``sway_coefficient`` are the ODE's, as in the reference.
    """

    chunk_codes: int = 24
    first_chunk_codes: int = 8
    left_context_codes: int = 24
    num_steps: int = 10
    guidance_scale: float = 0.5
    sway_coefficient: float = -1.0
    sample_rate: int = 24000
    default_voice: str = "Chelsie"

    def __post_init__(self) -> None:
        if min(self.chunk_codes, self.first_chunk_codes, self.left_context_codes) < 0:
            raise ValueError("chunk_codes, first_chunk_codes and left_context_codes must be >= 0")
        if self.num_steps < 2:
            raise ValueError("num_steps must be >= 2")
        if self.guidance_scale < 0 or self.sample_rate <= 0:
            raise ValueError("guidance_scale must be >= 0 and sample_rate > 0")


@dataclass(frozen=True)
class PythonOptions:
    """``function`` is "module:callable"; ``outputs`` declares the ports it returns and their types,
    ``params`` the request parameters it reads."""

    function: str
    outputs: Mapping[str, str] = field(default_factory=lambda: frozen_dict({"out": "any"}))
    # The request parameters the function reads from its ``params`` argument, with their types;
    # a request may pass only these (and those other stages on its route read).
    params: Mapping[str, ParamType] = field(default_factory=frozen_dict)

    def __post_init__(self) -> None:
        module, sep, attr = self.function.partition(":")
        if not (module and sep and attr):
            raise ValueError(f'function must look like "package.module:callable", got {self.function!r}')
