"""The stage-kind registry.

A kind is pure data here: its ports, its options class, the request parameters it reads and the
import path of the factory that builds its stage. The graph compiler, the CLI and admission read
this registry without importing torch; a worker imports the factory only when it starts.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omnistage.graph.options import (ArOptions, DiffusionOptions, EmbedOptions, EncodeOptions, PythonOptions,
                                     TalkerOptions, TranscribeOptions, TtsOptions, VocoderOptions)
from omnistage.graph.params import EMBEDDING, GENERATION, SAMPLING, SPEECH, SPOKEN_REPLY, TRANSCRIPTION, ParamSpec
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
    # The request parameters its stages read (checked at submit; see graph.params).
    params: tuple[ParamSpec, ...] = ()
    # For kinds whose parameters come from their options (python): options -> parameters.
    dynamic_params: Callable[[Any], tuple[ParamSpec, ...]] | None = None
    # Its stages keep a prefix cache that can be asked which images it holds before they are
    # encoded (they are ``ProbingStage``s; see stages.runtime.admission).
    probes: bool = False
    # "module:function" run at submit on a probed request's images: (files, ImageRefs) when the
    # probe may carry references instead of the files (the stage keeps what it reports covered
    # cached until the request ends, so it never needs those files), else None.
    probe_by_reference: str = ""

    def ports(self, options: Any, wired_inputs: Mapping[str, str]) -> tuple[tuple[PortSpec, ...], tuple[PortSpec, ...]]:
        if self.dynamic_ports is not None:
            return self.dynamic_ports(options, wired_inputs)
        return self.inputs, self.outputs

    def params_for(self, options: Any) -> tuple[ParamSpec, ...]:
        return self.dynamic_params(options) if self.dynamic_params is not None else self.params


def _python_params(options: PythonOptions) -> tuple[ParamSpec, ...]:
    return tuple(ParamSpec(name, tp) for name, tp in options.params.items())


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
    params=SAMPLING,
    inputs=_AR_INPUTS,
    outputs=_AR_OUTPUTS + (_AR_STATES,),
    needs_model=True,
    any_of=(("prompt", "messages"),),
    probes=True,
    probe_by_reference="omnistage.stages.kinds.image_refs:by_reference",
    description="autoregressive generation with a causal LM",
))
register_kind(KindSpec(
    name="prefill",
    factory="omnistage.stages.kinds.disagg:build_prefill",
    options=ArOptions,
    params=SAMPLING,
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
    params=SAMPLING,
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
    params=GENERATION,
    inputs=(PortSpec("prompt", "text", required=True),),
    outputs=(PortSpec("embeds", "prompt_embeds"),),
    needs_model=True,
    description="a diffusion pipeline's text encoders (CLIP/T5/UMT5) batched, with a prompt-embedding cache",
))
register_kind(KindSpec(
    name="diffusion",
    factory="omnistage.stages.kinds.diffusion:build_diffusion",
    options=DiffusionOptions,
    params=GENERATION,
    inputs=(PortSpec("prompt", "text"), PortSpec("embeds", "prompt_embeds"), PortSpec("image", "image"),
            PortSpec("mask", "image")),
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
    params=GENERATION,
    inputs=(PortSpec("latents", "latents", required=True),),
    outputs=(PortSpec("image", "image"), PortSpec("video", "video")),
    needs_model=True,
    description="a diffusion pipeline's VAE decoder, batched (sliced or tiled for large outputs)",
))
register_kind(KindSpec(
    name="tts",
    factory="omnistage.stages.kinds.speech:build_tts",
    options=TtsOptions,
    params=SPEECH,
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
    params=TRANSCRIPTION,
    inputs=(PortSpec("audio", "audio", required=True),),
    outputs=(PortSpec("text", "text", streaming=True),),
    needs_model=True,
    description="speech to text with an encoder-decoder (Whisper), batched window by window",
))
register_kind(KindSpec(
    name="embed",
    factory="omnistage.stages.kinds.embed:build_embed",
    options=EmbedOptions,
    params=EMBEDDING,
    inputs=(PortSpec("input", "text", required=True),),
    outputs=(PortSpec("embeddings", "tensor"),),
    needs_model=True,
    description="text embeddings (an encoder or a decoder LM, pooled and normalized) and CLIP's text and image "
                "embeddings, batched across requests",
))
register_kind(KindSpec(
    name="talker",
    factory="omnistage.stages.kinds.omni:build_talker",
    options=TalkerOptions,
    params=SPOKEN_REPLY,
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
    params=SPOKEN_REPLY,
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
    dynamic_params=_python_params,
    dynamic_ports=_python_ports,
    description="calls a user function once per request",
))
