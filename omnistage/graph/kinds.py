"""The stage-kind registry.

A kind is pure data here: its ports, its options class and the import path of the engine that
implements it. The graph compiler and the CLI read this registry without importing torch; a
worker imports the engine only when it starts.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from omnistage.graph.strict import frozen_dict


@dataclass(frozen=True)
class PortSpec:
    name: str
    type: str
    required: bool = False
    # Output: emitted as deltas while the request runs (e.g. text), concatenated by a receiver
    # that takes whole values. Input: takes deltas as they come, while the source still runs
    # (the source port must be streaming too).
    streaming: bool = False


@dataclass(frozen=True)
class KindSpec:
    name: str
    factory: str  # "module:function", called in a worker as function(stage_plan, device) -> Stage
    options: type
    inputs: tuple[PortSpec, ...] = ()
    outputs: tuple[PortSpec, ...] = ()
    needs_model: bool = False
    # Groups of input ports of which at least one must be connected and present.
    any_of: tuple[tuple[str, ...], ...] = ()
    # For kinds whose ports come from their options (python): options -> (inputs, outputs).
    dynamic_ports: Callable[[Any, Mapping[str, str]], tuple[tuple[PortSpec, ...], tuple[PortSpec, ...]]] | None = None
    description: str = ""
    # "module:function" run at submit as function(options, info, params) -> resolved params, where
    # ``info`` is what the stage reported when it started (see connectors.messages.Ready).
    check_params: str = ""
    # Its stages keep a prefix cache that can be asked which images it holds before they are
    # encoded (they are ``ProbingStage``s; see stages.runtime.admission).
    probes: bool = False

    def ports(self, options: Any, wired_inputs: Mapping[str, str]) -> tuple[tuple[PortSpec, ...], tuple[PortSpec, ...]]:
        if self.dynamic_ports is not None:
            return self.dynamic_ports(options, wired_inputs)
        return self.inputs, self.outputs


@dataclass(frozen=True)
class ArOptions:
    """Engine settings of an autoregressive stage; ``max_tokens`` is the per-request default."""

    max_tokens: int = 32
    block_size: int = 16
    num_blocks: int | None = None  # default: as many as kv_cache_mb holds
    kv_cache_mb: int = 256
    max_tokens_per_step: int = 2048
    chunked_prefill: bool = True
    short_prompt_tokens: int = 64
    prefix_caching: bool = True
    hidden_states: Literal["none", "generated", "all"] = "none"

    def __post_init__(self) -> None:
        for name in ("max_tokens", "block_size", "kv_cache_mb", "max_tokens_per_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.num_blocks is not None and self.num_blocks <= 0:
            raise ValueError("num_blocks must be > 0")


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
class DiffusionOptions:
    """Diffusion-family stages (text_encode, diffusion, vae_decode).

    Request defaults (``height`` ... ``guidance_scale``, ``fps``) fall back to the model family's
    own when unset. ``max_*`` bound what a request may ask for. ``vae_batch`` caps the rows one
    VAE decode call takes (slicing); ``vae_tiling`` decodes large outputs tile by tile.
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
    vae_tiling: bool = False

    def __post_init__(self) -> None:
        for name in ("height", "width", "num_frames", "num_inference_steps", "fps", "max_sequence_length"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("max_steps", "max_pixels", "max_frames", "vae_batch"):
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
    kv_cache_mb: int = 256
    max_tokens_per_step: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_tokens", "block_size", "kv_cache_mb", "max_tokens_per_step"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
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
    """``function`` is "module:callable"; ``outputs`` declares the ports it returns and their types."""

    function: str
    outputs: Mapping[str, str] = field(default_factory=lambda: frozen_dict({"out": "any"}))

    def __post_init__(self) -> None:
        module, sep, attr = self.function.partition(":")
        if not (module and sep and attr):
            raise ValueError(f'function must look like "package.module:callable", got {self.function!r}')


def _python_ports(options: PythonOptions, wired: Mapping[str, str]) -> tuple[tuple[PortSpec, ...], tuple[PortSpec, ...]]:
    inputs = tuple(PortSpec(name, "any", required=True) for name in wired)
    outputs = tuple(PortSpec(name, tp) for name, tp in options.outputs.items())
    return inputs, outputs


_AR_OUTPUTS = (PortSpec("text", "text", streaming=True), PortSpec("tokens", "tokens", streaming=True),
               PortSpec("logprobs", "any", streaming=True), PortSpec("hidden", "tensor", streaming=True))

# What a talker conditions on, per generated token: hidden states, input embeddings, the prompt.
_AR_STATES = PortSpec("states", "thinker_states", streaming=True)

_AR_INPUTS = (PortSpec("prompt", "text"), PortSpec("messages", "messages"), PortSpec("images", "image"),
              PortSpec("video", "video"), PortSpec("audio", "audio"), PortSpec("image_embeds", "media_embeds"),
              PortSpec("audio_embeds", "media_embeds"))

_REGISTRY: dict[str, KindSpec] = {}


def register_kind(spec: KindSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"stage kind {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def registry() -> Mapping[str, KindSpec]:
    return frozen_dict(_REGISTRY)


register_kind(KindSpec(
    name="ar",
    factory="omnistage.stages.kinds.ar:build",
    options=ArOptions,
    inputs=_AR_INPUTS,
    outputs=_AR_OUTPUTS + (_AR_STATES,),
    needs_model=True,
    any_of=(("prompt", "messages"),),
    probes=True,
    description="autoregressive generation with a causal LM",
))
register_kind(KindSpec(
    name="prefill",
    factory="omnistage.stages.kinds.disagg:build_prefill",
    options=ArOptions,
    inputs=_AR_INPUTS,
    outputs=(PortSpec("kv", "kv"),),
    needs_model=True,
    any_of=(("prompt", "messages"),),
    probes=True,
    description="computes a prompt's KV cache and first token, for a decode stage",
))
register_kind(KindSpec(
    name="decode",
    factory="omnistage.stages.kinds.disagg:build_decode",
    options=ArOptions,
    inputs=(PortSpec("kv", "kv", required=True),),
    outputs=_AR_OUTPUTS,
    needs_model=True,
    description="continues generation from a prefill stage's KV cache",
))
register_kind(KindSpec(
    name="encode",
    factory="omnistage.stages.kinds.encode:build",
    options=EncodeOptions,
    inputs=(PortSpec("images", "image"), PortSpec("video", "video"), PortSpec("audio", "audio")),
    outputs=(PortSpec("embeddings", "media_embeds"),),
    any_of=(("images", "video", "audio"),),
    needs_model=True,
    description="a vision or audio tower batched across requests, with an encoder cache",
))
register_kind(KindSpec(
    name="text_encode",
    factory="omnistage.stages.kinds.diffusion:build_text_encode",
    options=DiffusionOptions,
    inputs=(PortSpec("prompt", "text", required=True),),
    outputs=(PortSpec("embeds", "prompt_embeds"),),
    needs_model=True,
    description="a diffusion pipeline's text encoders (CLIP/T5/UMT5) batched, with a prompt-embedding cache",
))
register_kind(KindSpec(
    name="diffusion",
    factory="omnistage.stages.kinds.diffusion:build_diffusion",
    options=DiffusionOptions,
    inputs=(PortSpec("prompt", "text"), PortSpec("embeds", "prompt_embeds")),
    outputs=(PortSpec("latents", "latents"), PortSpec("image", "image"), PortSpec("video", "video"),
             PortSpec("progress", "any", streaming=True)),
    any_of=(("prompt", "embeds"),),
    needs_model=True,
    check_params="omnistage.diffusion.params:check_params",
    description="step-batched denoising (UNet or DiT); decodes with the VAE when image/video is wired",
))
register_kind(KindSpec(
    name="vae_decode",
    factory="omnistage.stages.kinds.diffusion:build_vae_decode",
    options=DiffusionOptions,
    inputs=(PortSpec("latents", "latents", required=True),),
    outputs=(PortSpec("image", "image"), PortSpec("video", "video")),
    needs_model=True,
    description="a diffusion pipeline's VAE decoder, batched (sliced or tiled for large outputs)",
))
register_kind(KindSpec(
    name="tts",
    factory="omnistage.stages.kinds.speech:build_tts",
    options=TtsOptions,
    inputs=(PortSpec("text", "text", required=True),),
    outputs=(PortSpec("audio", "audio", streaming=True),),
    needs_model=True,
    check_params="omnistage.speech.params:check_speech",
    description="text to speech (SpeechT5 + HiFi-GAN), batched, audio streamed in vocoder chunks",
))
register_kind(KindSpec(
    name="transcribe",
    factory="omnistage.stages.kinds.speech:build_transcribe",
    options=TranscribeOptions,
    inputs=(PortSpec("audio", "audio", required=True),),
    outputs=(PortSpec("text", "text"),),
    needs_model=True,
    description="speech to text with an encoder-decoder (Whisper), batched greedy decoding",
))
register_kind(KindSpec(
    name="talker",
    factory="omnistage.stages.kinds.omni:build_talker",
    options=TalkerOptions,
    inputs=(PortSpec("states", "thinker_states", required=True, streaming=True),),
    outputs=(PortSpec("codes", "codec", streaming=True),),
    needs_model=True,
    check_params="omnistage.omni.params:check_voice",
    description="codec tokens from a thinker's streamed states (Qwen2.5-Omni talker on the AR engine)",
))
register_kind(KindSpec(
    name="vocoder",
    factory="omnistage.stages.kinds.omni:build_vocoder",
    options=VocoderOptions,
    inputs=(PortSpec("codes", "codec", required=True, streaming=True),),
    outputs=(PortSpec("audio", "audio", streaming=True),),
    needs_model=True,
    check_params="omnistage.omni.params:check_voice",
    description="codec tokens to audio in streamed chunks (Qwen2.5-Omni token2wav: DiT + BigVGAN), batched",
))
register_kind(KindSpec(
    name="python",
    factory="omnistage.stages.kinds.python:build",
    options=PythonOptions,
    dynamic_ports=_python_ports,
    description="calls a user function once per request",
))
