"""The ``encode`` kind: a vision or audio tower as its own batched stage, with an encoder cache.

Inputs: a request's images and video (Qwen2-VL family), audio clips (Whisper family), or, from a
Qwen2.5-Omni thinker checkpoint, its images or its audio clips (whichever is wired).
Output (port ``embeddings``): one entry per item, in order, ``{"hash", "embeds", ...}``; an AR
stage matches them to its placeholders by content hash.
"""
from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoFeatureExtractor, AutoImageProcessor

from omnistage.connectors.messages import MediaEmbedding
from omnistage.encoders.audio import AudioTower, prepare_audio
from omnistage.encoders.cache import EncoderCache
from omnistage.encoders.engine import EncodeEngine
from omnistage.encoders.media import MediaLimits, load_audio, load_video, open_image
from omnistage.encoders.video import prepare_video
from omnistage.encoders.vision import VisionTower, prepare_images
from omnistage.errors import RequestRejected
from omnistage.graph.options import EncodeOptions
from omnistage.graph.plan import StagePlan
from omnistage.checkpoints.loading import (checkpoint_dir, component_kwargs, feature_extractor_dir, processor_dir,
                                           torch_dtype)
from omnistage.omni.hearing import OmniAudioTower, prepare_omni_audio
from omnistage.stages.worker.stage import Stage, StageOutput, StageRequest


class EncodeStage(Stage):
    def __init__(self, tower: Any, preprocessor: Any, options: EncodeOptions, max_items: int, modality: str) -> None:
        self.preprocessor = preprocessor
        self.modality = modality  # "vision", "audio" (Whisper) or "omni-audio" (a Qwen2.5-Omni thinker's)
        self.limits = MediaLimits(max_bytes=options.max_image_bytes, max_pixels=options.max_image_pixels)
        self.engine = EncodeEngine(tower.encode, EncoderCache(options.cache_mb << 20), max_items=max_items,
                                   max_patches=options.max_patches_per_step,
                                   patches=lambda item: getattr(item, "tokens", 1))

    def add(self, request: StageRequest) -> None:
        items = self._vision(request.inputs) if self.modality == "vision" else self._audio(request.inputs)
        self.engine.add(request.rid, items)

    def _vision(self, inputs: dict[str, Any]) -> list[Any]:
        if inputs.get("audio"):
            raise RequestRejected("this encoder takes images and video, not audio", param="audio")
        images, video = inputs.get("images") or [], inputs.get("video")
        if not isinstance(images, list) or (not images and video is None):
            raise RequestRejected("images must be a non-empty list", param="images")
        items: list[Any] = prepare_images(self.preprocessor, [open_image(im, self.limits) for im in images])
        for item in items:  # one this replica must encode: a broken file fails its request here, not a step
            if self.engine.cache.peek(item.hash) is None and item.image is not None:
                item.image.decode()
        if video is not None:
            clip = load_video(video, self.limits)
            items.append(prepare_video(self.preprocessor, clip.frames, clip.fps))
        return items

    def _audio(self, inputs: dict[str, Any]) -> list[Any]:
        prepare = prepare_omni_audio if self.modality == "omni-audio" else prepare_audio
        clips = inputs.get("audio")
        if inputs.get("images") or inputs.get("video") is not None:
            raise RequestRejected("this encoder takes audio, not images or video", param="images")
        clips = clips if isinstance(clips, list) else [clips]
        rate = self.preprocessor.sampling_rate
        return prepare(self.preprocessor, [load_audio(c, rate, self.limits) for c in clips])

    def step(self) -> list[StageOutput]:
        outs = []
        for rid, items, embeds in self.engine.step():
            value = [MediaEmbedding(it.hash, e, list(getattr(it, "grid_thw", ()))) for it, e in zip(items, embeds)]
            outs.append(StageOutput(rid, ports={"embeddings": value}, finished=True,
                                    meta={"encoded_items": len(items)}))
        return outs

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def stats(self) -> dict[str, float]:
        cache = self.engine.cache.stats()
        return {"waiting": float(len(self.engine.queue)), "running": float(len(self.engine.requests)),
                "encoder_cache_hit_rate": cache["hit_rate"], "encoder_cache_bytes": float(cache["bytes"])}


def build(stage: StagePlan, device: str) -> EncodeStage:
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    dtype = torch_dtype(stage.model_dtype, path, device)
    max_items = stage.config.batching.max_batch
    sub = component_kwargs(path, stage.model_component)
    model_type = (sub.get("config") or AutoConfig.from_pretrained(path)).model_type
    if model_type == "qwen2_5_omni_thinker":
        return _omni_encoder(stage, path, dtype, device, max_items, sub)
    if model_type == "whisper":
        from transformers import WhisperForConditionalGeneration
        model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        return EncodeStage(AudioTower(model), AutoFeatureExtractor.from_pretrained(path), stage.options, max_items,
                           "audio")
    from transformers import AutoModelForImageTextToText
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
    # This stage needs the vision tower only; drop the language model's weights.
    model.model.language_model = None
    model.lm_head = None
    model = model.to(device).eval()
    return EncodeStage(VisionTower(model), AutoImageProcessor.from_pretrained(path), stage.options, max_items,
                       "vision")


def _omni_encoder(stage: StagePlan, path: str, dtype: Any, device: str, max_items: int,
                  sub: dict[str, Any]) -> EncodeStage:
    """A Qwen2.5-Omni thinker's audio tower (when audio is wired) or vision tower; the language
    model's weights are dropped once loaded."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor
    model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(path, dtype=dtype, **sub)
    model.model.language_model = None
    model.lm_head = None
    model = model.to(device).eval()
    wired = {e.dst_port for e in stage.in_edges}
    if "audio" in wired:
        if wired & {"images", "video"}:
            raise ValueError("a Qwen2.5-Omni encode stage takes audio or images, not both: use one stage for each")
        extractor = WhisperFeatureExtractor.from_pretrained(feature_extractor_dir(path))
        return EncodeStage(OmniAudioTower(model), extractor, stage.options, max_items, "omni-audio")
    processor = AutoImageProcessor.from_pretrained(processor_dir(path))
    return EncodeStage(VisionTower(model), processor, stage.options, max_items, "vision")
