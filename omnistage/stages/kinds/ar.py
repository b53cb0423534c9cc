"""The ``ar`` kind: the AR engine (paged KV, continuous batching, prefix cache) as a stage.

Turns a request's messages or prompt (and images for Qwen2-VL-family models and the Qwen2.5-Omni
thinker, audio for the latter) into token ids, feeds the engine, and maps its outputs onto ports:
``text`` deltas, ``tokens``, ``logprobs``, when configured ``hidden`` states, and ``states`` for
a talker. Media embeddings come from ``encode`` stages on the ``image_embeds`` / ``audio_embeds``
ports when the graph has them; whatever is missing (or needed again after a preemption) is
computed by the model's own towers in this stage.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError
from transformers import AutoImageProcessor, AutoTokenizer

from omnistage.ar_engine.engine import EngineRequest, LLMEngine, TokenOutput
from omnistage.ar_engine.kernels import backend_for
from omnistage.ar_engine.multimodal import is_vision_language, media_spans, takes_video
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.checkpoints.loading import (checkpoint_dir, feature_extractor_dir, processor_dir,
                                           torch_dtype)
from omnistage.connectors.messages import MediaEmbedding, ThinkerStates
from omnistage.encoders.cache import EncoderCache
from omnistage.encoders.media import MediaLimits, load_audio, load_video, load_video_audio, open_image
from omnistage.encoders.video import prepare_video
from omnistage.encoders.vision import ImageItem, VisionTower, prepare_images
from omnistage.errors import RequestRejected
from omnistage.graph.options import ArOptions
from omnistage.graph.plan import StagePlan
from omnistage.omni.hearing import OmniAudioItem, OmniAudioTower, hears, prepare_omni_audio
from omnistage.stages.kinds.ar_model import load_model
from omnistage.stages.kinds.ar_ranks import start_ranks
from omnistage.stages.kinds.image_refs import resolved
from omnistage.stages.worker.stage import ProbingStage, StageOutput, StageRequest

log = logging.getLogger("omnistage.worker")


class ArStage(ProbingStage):
    def __init__(self, model: Any, tokenizer: Any, options: ArOptions, max_seqs: int,
                 image_processor: Any = None, device: str = "cpu", limits: MediaLimits | None = None,
                 states: bool = False, audio_extractor: Any = None, encoded_upstream: bool = False,
                 tp_size: int = 1) -> None:
        """``encoded_upstream``: an encode stage feeds this one image embeddings, so an image is
        decoded here only if the prefix cache loses it before its prefill (it decoded there).
        ``states``: emit what a talker conditions on (``states`` port; needs hidden_states "all";
        only requests routed to a talker compute every prompt position, the others may reuse the
        prefix cache).
        ``audio_extractor``: the feature extractor of a model that hears (Qwen2.5-Omni thinker).
        ``tp_size`` > 1: ``model`` is rank 0's shard; the other ranks follow (``ar_ranks``)."""
        if states and options.hidden_states != "all":
            raise ValueError('a stage whose "states" port is wired must set options.hidden_states: all '
                             '(a talker conditions on every position of the prompt)')
        self.model = model
        self.tok = tokenizer
        self.options = options
        self.image_processor = image_processor
        self.limits = limits or MediaLimits()
        self.encoded_upstream = encoded_upstream
        self.tower = VisionTower(model) if image_processor is not None else None
        media = (image_processor is not None or audio_extractor is not None) and options.media_cache_mb > 0
        self.media_cache = EncoderCache(options.media_cache_mb << 20) if media else None
        self.audio_extractor = audio_extractor
        self.ears = OmniAudioTower(model) if audio_extractor is not None else None
        encoder = self._encode_media if self.tower or self.ears else None
        self.engine = LLMEngine(model, tokenizer, options, max_seqs, backend=backend_for(device), media_encoder=encoder,
                                input_embeds=states, tp_size=tp_size)
        self.prepared: dict[str, EngineRequest] = {}  # probed requests waiting for their Admit
        self.states = states
        self.talking: set[str] = set()  # requests whose states a talker takes
        self.prompts: dict[str, EngineRequest] = {}  # of those, until their first states went out
        self._tools_rendered: bool | None = None  # whether the chat template renders tools (found once)

    # --- requests --------------------------------------------------------------------------
    def prepare(self, rid: str, inputs: dict[str, Any], params: Mapping[str, Any]) -> EngineRequest:
        """Decode, preprocess and tokenize a request. Touches no engine state, so a worker may
        run it off its main loop."""
        return self.engine_request(rid, inputs, self.sampling(params),
                                   bool(params.get("use_audio_in_video")), params.get("tools"))

    def probe_prepared(self, req: EngineRequest) -> list[int]:
        """Keep a prepared request for its Admit; say which of its images (counted among images
        only: audio clips may sit between them) the prefix cache covers. Those stay cached until
        the request ends: one given by reference (``ImageRef``) could not be encoded here."""
        self.prepared[req.rid] = req
        cached = set(self.engine.cached_media(req, hold=True))
        self._attach_cached(req)
        cached |= {i for i, span in enumerate(req.media) if span.embeds is not None}
        images = [i for i, span in enumerate(req.media) if isinstance(span.source, ImageItem)]
        return [k for k, i in enumerate(images) if i in cached]

    def sampling(self, params: Mapping[str, Any]) -> SamplingParams:
        """A request's sampling parameters, checked (``logit_bias`` against the model's vocabulary,
        a grammar by compiling it)."""
        sp = SamplingParams.from_request(params, self.options.max_tokens, self.engine.runner.lm_head.out_features)
        if sp.guide is not None:
            self.engine.compile_guide(sp.guide)
        return sp

    def add(self, request: StageRequest) -> None:
        req = self.take_request(request)
        self.engine.add(req)
        if self.states and req.all_states:
            self.talking.add(req.rid)
            self.prompts[req.rid] = req

    def take_request(self, request: StageRequest) -> EngineRequest:
        """The engine request: prepared by an earlier probe, or built now; with embeddings."""
        req = self.prepared.pop(request.rid, None)
        if req is None:
            sampling = self.sampling(request.params)
            req = self.engine_request(request.rid, request.inputs, sampling,
                                      bool(request.params.get("use_audio_in_video")), request.params.get("tools"))
        self._attach_embeddings(req, (request.inputs.get("image_embeds") or []) + (request.inputs.get("audio_embeds") or []))
        # Every position's states only for a request whose states someone takes; the others
        # keep none and may start from the prefix cache.
        req.all_states = request.outputs is None or bool({"states", "hidden"} & request.outputs)
        return req

    def _encode_media(self, spans: list[Any]) -> list[Any]:
        """Embeddings of media spans the engine must compute: audio by the audio tower, images
        and video by the vision tower, each in one forward, each item once (spans of one split
        item take their rows of it), in the spans' order."""
        items = list({id(s.source): s.source for s in spans}.values())
        heard = [it for it in items if isinstance(it, OmniAudioItem)]
        seen = [it for it in items if not isinstance(it, OmniAudioItem)]
        done: dict[int, Any] = {}
        for group, tower in ((heard, self.ears), (seen, self.tower)):
            if group:
                assert tower is not None
                done.update(zip(map(id, group), tower.encode(group)))
        if self.media_cache is not None:
            for span in spans:
                self.media_cache.put(span.content_hash, done[id(span.source)])
        return [done[id(s.source)][s.offset:s.offset + s.length] for s in spans]

    def engine_request(self, rid: str, inputs: dict[str, Any], sampling: SamplingParams,
                       audio_in_video: bool = False, tools: list[Any] | None = None) -> EngineRequest:
        """The request's token ids and media spans; ``audio_in_video``: a video file's sound track
        goes in with its frames (Qwen2.5-Omni); ``tools``: rendered by the chat template."""
        ids = self._token_ids(inputs, tools)
        images = inputs.get("images") or []
        video = inputs.get("video")
        clips = inputs.get("audio")
        clips = [] if clips is None else clips if isinstance(clips, list) else [clips]
        if not images and video is None and not clips:
            return EngineRequest(rid, ids, sampling)
        if clips and self.audio_extractor is None:
            raise RequestRejected("this stage's model does not take audio", param="audio")
        if (images or video is not None) and self.image_processor is None:
            raise RequestRejected("this stage's model does not take images or video",
                                  param="images" if images else "video")
        if video is not None and not takes_video(self.model):
            raise RequestRejected("this stage's model does not take video yet", param="video")
        items = prepare_images(self.image_processor, [open_image(im, self.limits) for im in resolved(images)]) \
            if images else []
        if not self.encoded_upstream:
            for item in items:  # this stage encodes them: a broken file fails the request here, not a step
                assert item.image is not None
                item.image.decode()
        videos, sound = [], None
        if video is not None:
            clip = load_video(video, self.limits)
            videos = [prepare_video(self.image_processor, clip.frames, clip.fps)]
            sound = self._video_sound(video) if audio_in_video else None
        heard = []
        if clips:
            rate = self.audio_extractor.sampling_rate
            heard = prepare_omni_audio(self.audio_extractor, [load_audio(c, rate, self.limits) for c in clips])
        try:
            ids, spans, positions, delta = media_spans(self.model, ids, items, videos, heard, sound)
        except ValueError as exc:
            raise RequestRejected(str(exc), param="messages") from None
        return EngineRequest(rid, ids, sampling, spans, positions, delta)

    def _video_sound(self, video: Any) -> OmniAudioItem | None:
        if self.audio_extractor is None:
            raise RequestRejected("use_audio_in_video needs a model that hears", param="use_audio_in_video")
        rate = self.audio_extractor.sampling_rate
        samples = load_video_audio(video, rate, self.limits)
        return None if samples is None else prepare_omni_audio(self.audio_extractor, [samples])[0]

    def _attach_embeddings(self, req: EngineRequest, embeddings: list[MediaEmbedding]) -> None:
        """Embeddings an encode stage sent (kept in the media cache too), then any the media
        cache holds, onto the request's spans."""
        by_hash = {e.hash: e.embeds for e in embeddings}
        if self.media_cache is not None:
            for key, embeds in by_hash.items():
                self.media_cache.put(key, embeds)
        for span in req.media:
            if span.embeds is None and span.content_hash in by_hash:
                span.embeds = by_hash[span.content_hash][span.offset:span.offset + span.length]
        self._attach_cached(req)

    def _attach_cached(self, req: EngineRequest) -> None:
        if self.media_cache is None:
            return
        for span in req.media:
            if span.embeds is None and (embeds := self.media_cache.get(span.content_hash)) is not None:
                span.embeds = embeds[span.offset:span.offset + span.length]

    def _token_ids(self, inputs: dict[str, Any], tools: list[Any] | None = None) -> list[int]:
        if tools and (inputs.get("messages") is None or not self._renders_tools()):
            raise RequestRejected("tools need a chat request to a model whose chat template renders tools; "
                                  "this one's does not", param="tools")
        if inputs.get("messages") is not None:
            messages = inputs["messages"]
            if not isinstance(messages, list) or not messages:
                raise RequestRejected("messages must be a non-empty list", param="messages")
            try:
                text = self.tok.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                    tokenize=False)
            except (KeyError, TypeError, ValueError, TemplateError) as exc:  # what a template raises on messages it refuses
                raise RequestRejected(f"messages do not fit the model's chat template: {exc}", param="messages") from None
            return list(self.tok(text, add_special_tokens=False)["input_ids"])
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str):
            raise RequestRejected("prompt must be a string", param="prompt")
        return list(self.tok(prompt)["input_ids"])

    def _renders_tools(self) -> bool:
        """Whether the chat template puts tools in the prompt (many templates ignore them)."""
        if self._tools_rendered is None:
            probe = [{"type": "function", "function": {"name": "omnistage_probe_tool", "parameters": {}}}]
            messages = [{"role": "user", "content": "x"}]
            try:
                with_tools = self.tok.apply_chat_template(messages, tools=probe, tokenize=False)
                self._tools_rendered = "omnistage_probe_tool" in with_tools
            except (KeyError, TypeError, ValueError, TemplateError):
                self._tools_rendered = False
        return self._tools_rendered

    def step(self) -> list[StageOutput]:
        outputs = []
        for out in self.engine.step():
            outputs.append(to_stage_output(out, self.tok))
            if out.rid in self.talking:
                outputs[-1].ports["states"] = self._states(out)
                if out.finished:
                    self.talking.discard(out.rid)
        return outputs

    def _states(self, out: TokenOutput) -> ThinkerStates:
        """This token's states for a talker; the first also carries the prompt (ids, positions)."""
        req = self.prompts.pop(out.rid, None)
        if req is None:
            return ThinkerStates(out.tokens, out.hidden, out.embeds)
        return ThinkerStates(out.tokens, out.hidden, out.embeds, list(req.prompt), req.mrope_positions,
                             int(req.mrope_delta))

    def abort(self, rid: str) -> None:
        self.prepared.pop(rid, None)
        self.prompts.pop(rid, None)
        self.talking.discard(rid)
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def stats(self) -> dict[str, float]:
        media = {} if self.media_cache is None else {"media_cache_hit_rate": self.media_cache.stats()["hit_rate"]}
        return {**self.engine.stats(), "prepared": float(len(self.prepared)), **media}


def to_stage_output(out: TokenOutput, tokenizer: Any) -> StageOutput:
    ports: dict[str, Any] = {"text": out.text, "tokens": out.tokens}
    if out.logprobs:
        ports["logprobs"] = [_logprob_entry(tokenizer, s.token, s.logprob, s.top) for s in out.logprobs]
    if out.hidden is not None:
        ports["hidden"] = out.hidden
    meta = {}
    if out.finished:
        meta = {"finish_reason": out.finish_reason, "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.completion_tokens, "cached_tokens": out.cached_tokens,
                "queue_seconds": out.queue_s, "prefill_seconds": out.prefill_s, "decode_seconds": out.decode_s}
    return StageOutput(out.rid, ports=ports, finished=out.finished, meta=meta)


def _logprob_entry(tokenizer: Any, token: int, logprob: float | None, top: Any) -> dict[str, Any]:
    """One sampled token in OpenAI's logprobs shape (token text, its UTF-8 bytes, alternatives)."""
    def piece(tid: int, lp: float | None) -> dict[str, Any]:
        text = tokenizer.decode([tid])
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}
    return {**piece(token, logprob), "top_logprobs": [piece(t, lp) for t, lp in top]}


def build_stage(cls: type[ArStage], stage: StagePlan, device: str) -> ArStage:
    """Load the stage's checkpoint (model, tokenizer, image processor for VL) into ``cls``."""
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    dtype = torch_dtype(stage.model_dtype, path, device)
    started = time.perf_counter()
    tp_size = stage.config.resources.tensor_parallel
    if tp_size > 1:
        # (each rank computes on as many threads as this worker was given)
        start_ranks(tp_size, path, dtype, device, stage.config.resources.threads or torch.get_num_threads())
    model = load_model(path, dtype, device, stage.model_component, tp_size)
    log.info("%s: loaded %s (%s, dtype %s%s) on %s in %.1f s", stage.name, stage.model_path,
             model.config.architectures[0] if model.config.architectures else model.config.model_type,
             str(dtype).removeprefix("torch."), ", the checkpoint's" if stage.model_dtype == "auto" else "", device,
             time.perf_counter() - started)
    image_processor = AutoImageProcessor.from_pretrained(processor_dir(path)) if is_vision_language(model) else None
    audio_extractor = None
    if hears(model):
        from transformers import WhisperFeatureExtractor
        audio_extractor = WhisperFeatureExtractor.from_pretrained(feature_extractor_dir(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if stage.options.chat_template is not None:
        tokenizer.chat_template = read_template(stage.options.chat_template)
    built = cls(model, tokenizer, stage.options, stage.config.batching.max_batch,
                image_processor, device, states="states" in stage.used_outputs, audio_extractor=audio_extractor,
                encoded_upstream=any(edge.dst_port == "image_embeds" for edge in stage.in_edges), tp_size=tp_size)
    log.info("%s: %s", stage.name, built.engine.cache.describe(dtype))
    return built


def read_template(value: str) -> str:
    """A chat template given inline (it has Jinja tags) or as the path of a file holding one."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"chat_template {value!r} is neither a Jinja template nor a file")
    return path.read_text()


def build(stage: StagePlan, device: str) -> ArStage:
    return build_stage(ArStage, stage, device)
