"""``omnistage serve MODEL``: the default graph for a checkpoint, chosen by its architecture.

A recipe turns a model reference and the serve flags into a graph (the same YAML a user could
write; ``--print-graph`` shows it). One recipe per architecture family; an architecture without
one is refused, naming what is supported.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omnistage.checkpoints.files import local_dir, read_json
from omnistage.checkpoints.support import DIFFUSION_PIPELINES, EMBEDDERS, OMNI, TEXT_LMS, VISION_LMS, architecture


@dataclass(frozen=True)
class ServeSettings:
    """The ``vllm serve``-style flags; None leaves the kind's own default."""

    served_model_name: str | None = None
    dtype: str = "auto"
    device: str | None = None
    max_model_len: int | None = None
    memory_utilization: float | None = None
    kv_cache_mb: int | None = None
    max_num_seqs: int | None = None
    chat_template: str | None = None
    prefix_caching: bool | None = None
    max_tokens_per_step: int | None = None

    def engine_options(self) -> dict[str, Any]:
        """The options of a stage running the AR engine."""
        return _present(max_model_len=self.max_model_len, memory_utilization=self.memory_utilization,
                        kv_cache_mb=self.kv_cache_mb, chat_template=self.chat_template,
                        prefix_caching=self.prefix_caching, max_tokens_per_step=self.max_tokens_per_step)

    def stage(self, kind: str, inputs: dict[str, str], outputs: dict[str, str] | None = None,
              max_batch: int = 16, options: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": kind, "model": "main", "inputs": inputs}
        if outputs:
            body["outputs"] = outputs
        engine = kind in ENGINE_KINDS and self.max_num_seqs is not None
        body["batching"] = {"max_batch": self.max_num_seqs if engine else max_batch}
        if options:
            body["options"] = options
        if self.device:
            body["resources"] = {"device": self.device}
        return body


ENGINE_KINDS = ("ar", "prefill", "decode")  # the stages the engine flags shape
ENGINE_FLAGS = ("max_model_len", "memory_utilization", "kv_cache_mb", "max_num_seqs", "chat_template", "prefix_caching",
                "max_tokens_per_step")
# each flag as ``vllm serve`` spells it, where the name differs
FLAG_NAMES = {"memory_utilization": "--gpu-memory-utilization", "kv_cache_mb": "--kv-cache-memory",
              "prefix_caching": "--[no-]enable-prefix-caching", "max_tokens_per_step": "--max-num-batched-tokens"}


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _chat(s: ServeSettings) -> dict[str, Any]:
    return {"chat": s.stage("ar", {"messages": "request.messages", "prompt": "request.prompt"},
                            {"text": "response.text", "logprobs": "response.logprobs", "tokens": "response.tokens"},
                            64, s.engine_options())}


def _vision_chat(s: ServeSettings) -> dict[str, Any]:
    media = {"images": "request.images", "video": "request.video"}
    chat = s.stage("ar", {"messages": "request.messages", "prompt": "request.prompt", **media,
                          "image_embeds": "vision.embeddings"},
                   {"text": "response.text", "logprobs": "response.logprobs", "tokens": "response.tokens"},
                   64, s.engine_options())
    return {"vision": s.stage("encode", media, max_batch=16), "chat": chat}


def _diffusion(output: str, edits: bool = False) -> Callable[[ServeSettings], dict[str, Any]]:
    """text encode -> denoise -> VAE decode; ``edits``: the denoiser also takes a request's
    input image and mask (image to image and inpainting: /v1/images/edits)."""
    def recipe(s: ServeSettings) -> dict[str, Any]:
        inputs = {"embeds": "text.embeds", **({"image": "request.image", "mask": "request.mask"} if edits else {})}
        return {"text": s.stage("text_encode", {"prompt": "request.prompt"}, max_batch=32),
                "denoise": s.stage("diffusion", inputs, {"progress": "response.progress"}),
                "decode": s.stage("vae_decode", {"latents": "denoise.latents"}, {output: f"response.{output}"})}
    return recipe


def _speech(s: ServeSettings) -> dict[str, Any]:
    return {"speak": s.stage("tts", {"text": "request.prompt"}, {"audio": "response.audio"})}


def _embed(s: ServeSettings) -> dict[str, Any]:
    return {"embed": s.stage("embed", {"input": "request.input"}, {"embeddings": "response.embeddings"}, 64)}


def _transcribe(s: ServeSettings) -> dict[str, Any]:
    return {"listen": s.stage("transcribe", {"audio": "request.audio"}, {"text": "response.text"})}


RECIPES: dict[str, Callable[[ServeSettings], dict[str, Any]]] = {
    **{arch: _chat for arch in TEXT_LMS},
    **{arch: _vision_chat for arch in VISION_LMS},
    "StableDiffusionPipeline": _diffusion("image", edits=True),
    "StableDiffusionXLPipeline": _diffusion("image", edits=True),
    "StableDiffusion3Pipeline": _diffusion("image", edits=True),
    "FluxPipeline": _diffusion("image", edits=True),
    "QwenImagePipeline": _diffusion("image"),
    "WanPipeline": _diffusion("video"),
    "SpeechT5ForTextToSpeech": _speech,
    "WhisperForConditionalGeneration": _transcribe,
    "BertModel": _embed,
    "CLIPModel": _embed,
}
assert set(RECIPES) - {OMNI} >= DIFFUSION_PIPELINES


def omni_stages(s: ServeSettings) -> dict[str, Any]:
    """Qwen2.5-Omni: thinker -> talker -> vocoder, each over its component of the checkpoint."""
    thinker = s.stage("ar", {"messages": "request.messages", "prompt": "request.prompt", "audio": "request.audio",
                             "images": "request.images", "video": "request.video"},
                      {"text": "response.text", "tokens": "response.tokens"}, 32,
                      {**s.engine_options(), "hidden_states": "all"})
    thinker["model"] = "thinker"
    talker = s.stage("talker", {"states": "thinker.states"}, max_batch=32)
    talker["model"] = "talker"
    vocoder = s.stage("vocoder", {"codes": "talker.codes"}, {"audio": "response.audio"})
    vocoder["model"] = "token2wav"
    return {"thinker": thinker, "talker": talker, "vocoder": vocoder}


def build_graph(ref: str, resolved: str, settings: ServeSettings) -> str:
    """The YAML of the default graph serving the checkpoint ``ref`` (as the user wrote it;
    ``resolved`` is where it loads from). Raises ValueError for an architecture without a recipe."""
    arch, _ = architecture(resolved)
    name = settings.served_model_name or ref
    path = str(Path(ref).expanduser().resolve()) if local_dir(resolved) is not None and Path(ref).expanduser().is_dir() else ref
    if arch == OMNI:  # one directory, as released: each stage loads its sub-model from it
        stages = omni_stages(settings)
        models = {sub: {"path": path, "dtype": settings.dtype, "component": sub} for sub in ("thinker", "talker", "token2wav")}
    elif read_json(resolved, "modules.json") is not None and arch in EMBEDDERS:  # a sentence-transformers model
        stages = _embed(settings)
        models = {"main": {"path": path, "dtype": settings.dtype}}
    elif arch in RECIPES:
        stages = RECIPES[arch](settings)
        models = {"main": {"path": path, "dtype": settings.dtype}}
    else:
        known = sorted(set(RECIPES) | {OMNI})
        raise ValueError(f"{ref}: no default graph for architecture {arch}; serve-by-name knows {', '.join(known)} "
                         "(write a graph YAML for anything else)")
    if not any(st["kind"] in ENGINE_KINDS for st in stages.values()):
        given = [FLAG_NAMES.get(f, f"--{f.replace('_', '-')}") for f in ENGINE_FLAGS if getattr(settings, f) is not None]
        if given:
            raise ValueError(f"{ref}: {', '.join(given)} shape an AR engine stage, and the graph for {arch} has "
                             "none (--print-graph shows it; set its stages' options in a graph file)")
    graph = {"name": name, "models": models, "stages": stages}
    header = f"# The default graph for {ref} ({arch}); save it, edit it, serve it with: omnistage serve FILE\n"
    return header + yaml.safe_dump(graph, sort_keys=False, width=110)
