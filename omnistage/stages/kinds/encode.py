"""The ``encode`` kind: a vision tower as its own batched stage, with an encoder cache.

Input: a request's images. Output (port ``embeddings``): one entry per image, in order,
``{"hash", "embeds", "grid"}``; the AR stage matches them to its placeholders by content hash.
"""
from __future__ import annotations

from typing import Any

from transformers import AutoImageProcessor

from omnistage.encoders.cache import EncoderCache
from omnistage.encoders.engine import EncodeEngine
from omnistage.encoders.media import MediaLimits, load_image, load_video
from omnistage.encoders.video import prepare_video
from omnistage.encoders.vision import VisionTower, prepare_images
from omnistage.errors import RequestRejected
from omnistage.graph.kinds import EncodeOptions
from omnistage.graph.plan import StagePlan
from omnistage.models.loading import checkpoint_dir, torch_dtype
from omnistage.stages.engine import StageOutput, StageRequest


class EncodeStage:
    def __init__(self, tower: VisionTower, processor: Any, options: EncodeOptions, max_items: int) -> None:
        self.processor = processor
        self.limits = MediaLimits(max_bytes=options.max_image_bytes, max_pixels=options.max_image_pixels)
        self.engine = EncodeEngine(tower.encode, EncoderCache(options.cache_mb << 20), max_items=max_items,
                                   max_patches=options.max_patches_per_step,
                                   patches=lambda item: item.tokens)

    def add(self, request: StageRequest) -> None:
        images = request.inputs.get("images") or []
        video = request.inputs.get("video")
        if not isinstance(images, list) or (not images and video is None):
            raise RequestRejected("images must be a non-empty list", param="images")
        items: list[Any] = prepare_images(self.processor, [load_image(im, self.limits) for im in images])
        if video is not None:
            items.append(prepare_video(self.processor, load_video(video, self.limits)))
        self.engine.add(request.rid, items)

    def step(self) -> list[StageOutput]:
        outs = []
        for rid, items, embeds in self.engine.step():
            value = [{"hash": it.hash, "embeds": e, "grid": list(it.grid_thw)} for it, e in zip(items, embeds)]
            outs.append(StageOutput(rid, ports={"embeddings": value}, finished=True,
                                    meta={"encoded_items": len(items)}))
        return outs

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()


def build(stage: StagePlan, device: str) -> EncodeStage:
    from transformers import AutoModelForImageTextToText
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype(stage.model_dtype, device))
    # This stage needs the vision tower only; drop the language model's weights.
    model.model.language_model = None
    model.lm_head = None
    model = model.to(device).eval()
    return EncodeStage(VisionTower(model), AutoImageProcessor.from_pretrained(path), stage.options,
                       stage.config.batching.max_batch)
