"""The diffusion-family kinds: ``text_encode``, ``diffusion`` and ``vae_decode``.

One stage can do all three (prompt in, image out) or they can be split across stages, linked by
the ``prompt_embeds`` and ``latents`` ports. Each stage loads only the pipeline components it
runs. Requests arrive with their parameters already resolved by the ``diffusion`` kind's
submit-time check (``omnistage.diffusion.params.check_params``).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import replace
from typing import Any, Literal

import torch

from omnistage.connectors.messages import Progress, PromptEmbeds
from omnistage.diffusion.engine import DiffusionEngine, decode_batched
from omnistage.diffusion.families import CACHE_THRESHOLDS, Family
from omnistage.diffusion.lora import Adapters
from omnistage.diffusion.registry import family_class
from omnistage.diffusion.output import encode_image, encode_video
from omnistage.diffusion.params import GenerationParams, check_prompt, parse_params
from omnistage.diffusion.schedulers import SchedulerFactory, scheduler_names
from omnistage.diffusion.text import PromptCache, PromptEncoder, TextEncodeEngine, TextJob
from omnistage.encoders.media import MediaLimits, load_image, load_mask
from omnistage.errors import RequestRejected
from omnistage.graph.options import DiffusionOptions
from omnistage.graph.plan import StagePlan, diffusion_roles
from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype
from omnistage.stages.worker.stage import Stage, StageOutput, StageRequest


def load_family(stage: StagePlan, device: str, roles: set[str]) -> Family:
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    options: DiffusionOptions = stage.options
    family = family_class(path)(path, roles, torch_dtype(stage.model_dtype, path, device, half_on_gpu=True), device,
                                options.max_sequence_length)
    if "vae" in roles and tiles(options, device):
        family.pipe.vae.enable_tiling()
    return family


def tiles(options: DiffusionOptions, device: str) -> bool:
    """Whether the VAE decodes tile by tile (diffusers does so only above its tile size)."""
    return device.startswith("cuda") if options.vae_tiling == "auto" else bool(options.vae_tiling)


def stage_info(family: Family, options: DiffusionOptions) -> dict[str, Any]:
    """What a request may ask of this model: sizes, defaults, limits, schedulers (sent in Ready)."""
    info = family.info()
    info["schedulers"] = scheduler_names(family.prediction)
    overrides = {"height": options.height, "width": options.width, "num_frames": options.num_frames,
                 "steps": options.num_inference_steps, "guidance": options.guidance_scale, "fps": options.fps}
    info.update({k: v for k, v in overrides.items() if v is not None})
    info.update(max_steps=options.max_steps, max_pixels=options.max_pixels, max_frames=options.max_frames)
    threshold = CACHE_THRESHOLDS[family.prediction] if options.cache.threshold is None else options.cache.threshold
    info["cache"] = {"policy": options.cache.policy, "threshold": threshold}
    if "denoise" in family.roles:
        info["loras"] = sorted(options.loras)
    return info


def step_budget(family: Family, options: DiffusionOptions, info: dict[str, Any]) -> float | Literal["auto"] | None:
    """The engine's budget: "auto" (widths measured), rows times latent elements, or None (a
    fixed max_batch)."""
    if options.step_budget == "auto":
        return "auto"
    if options.step_budget == 0:
        return None
    return options.step_budget * math.prod(family.latent_shape(info["height"], info["width"], info.get("num_frames")))


def encode_output(family: Family, pixels: Any, p: GenerationParams) -> dict[str, Any]:
    if family.output == "video":
        return encode_video(pixels, p.output_format, p.fps)
    return encode_image(pixels, p.output_format)


class DiffusionStage(Stage):
    def __init__(self, family: Family, options: DiffusionOptions, max_batch: int, used: frozenset[str]) -> None:
        self.family = family
        self.options = options
        self._info = stage_info(family, options)
        self.limits = MediaLimits(max_pixels=options.max_pixels)
        self.decode = bool({"image", "video"} & used)
        self.progress = "progress" in used
        text = None
        if "text" in family.roles:
            text = PromptEncoder(family.encode_text, PromptCache(options.prompt_cache_mb << 20), max_batch)
        schedulers = SchedulerFactory(family.pipe.scheduler, family.prediction)
        adapters = Adapters(family.pipe, options.loras, options.max_loras) if options.loras else None
        self.engine = DiffusionEngine(family, schedulers, max_batch, text, step_budget(family, options, self._info),
                                      adapters)
        self.params: dict[str, GenerationParams] = {}

    def info(self) -> dict[str, Any]:
        return self._info

    def add(self, request: StageRequest) -> None:
        p = parse_params(self._info, request.params)
        image = self._input_image(request)
        mask = self._input_mask(request, image)
        if mask is not None and request.params.get("strength") is None:
            p = replace(p, strength=1.0)  # the masked area is painted anew, as the inpaint pipelines default
        embeds = request.inputs.get("embeds")
        if embeds is not None:
            self.engine.add(request.rid, p, embeds=(embeds.cond, embeds.uncond), image=image, mask=mask)
        elif self.engine.text is None:
            raise RequestRejected("this diffusion stage has no text encoder; wire a text_encode stage's embeds",
                                  param="prompt")
        else:
            self.engine.add(request.rid, p, prompt=check_prompt(request.inputs.get("prompt")), image=image, mask=mask)
        self.params[request.rid] = p

    def _input_image(self, request: StageRequest) -> Any:
        """The image a request starts from (img2img), decoded; None for text to image."""
        src = request.inputs.get("image")
        if src is None:
            if request.params.get("strength") is not None:
                raise RequestRejected("strength applies only to a request with an input image", param="strength")
            return None
        if not self.family.takes_image:
            raise RequestRejected(f"this model ({self.family.name}) does not start from an input image yet",
                                  param="image")
        return load_image(src, self.limits, "image")

    def _input_mask(self, request: StageRequest, image: Any) -> Any:
        """The inpainting mask (grayscale, white repaints; see ``load_mask``), the image's size."""
        src = request.inputs.get("mask")
        if src is None:
            return None
        if image is None:
            raise RequestRejected("mask needs an image to edit", param="mask")
        mask = load_mask(src, self.limits)
        if mask.size != image.size:
            raise RequestRejected(f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
                                  f"{image.size[0]}x{image.size[1]}; they must be the same size", param="mask")
        return mask

    def step(self) -> list[StageOutput]:
        finished = self.engine.step()
        outs = [StageOutput(rid, ports={"progress": [Progress(done, total)]})
                for rid, (done, total) in self.engine.progress().items() if self.progress]
        if not finished:
            return outs
        params = [self.params.pop(f.rid) for f in finished]
        port = self.family.output
        if self.decode:
            pixels = decode_batched(self.family.decode, [f.latents for f in finished], self.options.vae_batch)
            values = [{port: encode_output(self.family, px, p)} for px, p in zip(pixels, params)]
        else:
            values = [{"latents": f.latents} for f in finished]
        for f, value in zip(finished, values):
            # The last progress chunk goes out before the result.
            ports = {"progress": [Progress(f.steps, f.steps)]} if self.progress else {}
            outs.append(StageOutput(f.rid, ports={**ports, **value}, finished=True,
                                    meta={"steps": f.steps, "skipped_steps": f.skipped}))
        return outs

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)
        self.params.pop(rid, None)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def stats(self) -> dict[str, float]:
        stats = {"waiting": float(len(self.engine.waiting)), "running": float(len(self.engine.running)),
                 "batch_size": float(self.engine.last_batch)}
        if self.engine.text is not None:
            stats["prompt_cache_hit_rate"] = self.engine.text.cache.hit_rate()
        return stats


class TextEncodeStage(Stage):
    def __init__(self, family: Family, options: DiffusionOptions, max_batch: int) -> None:
        self._info = stage_info(family, options)
        encoder = PromptEncoder(family.encode_text, PromptCache(options.prompt_cache_mb << 20), max_batch)
        self.engine = TextEncodeEngine(encoder, max_batch)

    def info(self) -> dict[str, Any]:
        return self._info

    def add(self, request: StageRequest) -> None:
        p = parse_params(self._info, request.params)
        prompt = check_prompt(request.inputs.get("prompt"))
        self.engine.add(TextJob(request.rid, prompt, p.negative_prompt if p.cfg else None))

    def step(self) -> list[StageOutput]:
        return [StageOutput(rid, ports={"embeds": PromptEmbeds(cond, uncond)}, finished=True)
                for rid, cond, uncond in self.engine.step()]

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self.engine.queue)),
                "prompt_cache_hit_rate": self.engine.encoder.cache.hit_rate()}


class VaeDecodeStage(Stage):
    def __init__(self, family: Family, options: DiffusionOptions, max_batch: int) -> None:
        self.family = family
        self.options = options
        self.max_batch = max_batch
        self._info = stage_info(family, options)
        self.queue: deque[tuple[str, torch.Tensor, GenerationParams]] = deque()

    def info(self) -> dict[str, Any]:
        return self._info

    def add(self, request: StageRequest) -> None:
        latents = request.inputs.get("latents")
        if not isinstance(latents, torch.Tensor):
            raise RequestRejected("latents must be a tensor", param="latents")
        self.queue.append((request.rid, latents.to(self.family.device), parse_params(self._info, request.params)))

    def step(self) -> list[StageOutput]:
        jobs = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
        pixels = decode_batched(self.family.decode, [lat for _, lat, _ in jobs], self.options.vae_batch)
        return [StageOutput(rid, ports={self.family.output: encode_output(self.family, px, p)}, finished=True)
                for (rid, _, p), px in zip(jobs, pixels)]

    def abort(self, rid: str) -> None:
        self.queue = deque(j for j in self.queue if j[0] != rid)

    def has_work(self) -> bool:
        return bool(self.queue)

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self.queue))}


def build_diffusion(stage: StagePlan, device: str) -> DiffusionStage:
    return DiffusionStage(load_family(stage, device, diffusion_roles(stage)), stage.options,
                          stage.config.batching.max_batch, stage.used_outputs)


def build_text_encode(stage: StagePlan, device: str) -> TextEncodeStage:
    return TextEncodeStage(load_family(stage, device, diffusion_roles(stage)), stage.options,
                           stage.config.batching.max_batch)


def build_vae_decode(stage: StagePlan, device: str) -> VaeDecodeStage:
    return VaeDecodeStage(load_family(stage, device, diffusion_roles(stage)), stage.options,
                          stage.config.batching.max_batch)
