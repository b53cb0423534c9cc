"""Per-request generation parameters, checked against what the loaded model can do.

Pure Python (no torch): the orchestrator runs ``check_params`` when a request is submitted, with
the ``info`` every diffusion-family stage reports when it starts, so a bad size, step count,
guidance or scheduler is refused before any stage computes anything.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omnistage.errors import RequestRejected

IMAGE_FORMATS = ("png", "jpeg", "webp", "raw")
VIDEO_FORMATS = ("mp4", "gif", "webp", "raw")
MAX_PROMPT_CHARS = 8192


CACHE_POLICIES = ("off", "reuse")
CACHE_FIELDS = ("policy", "threshold")


@dataclass(frozen=True)
class CacheSpec:
    """A request's step caching (``step_cache.py``)."""

    policy: str = "off"
    threshold: float = 0.0
    warmup: int = 2  # first steps always computed
    max_skips: int = 3  # skipped steps in a row at most


@dataclass(frozen=True)
class GenerationParams:
    height: int
    width: int
    num_frames: int | None  # None for image models
    steps: int
    guidance: float
    seed: int
    scheduler: str  # "default" = the checkpoint's own
    negative_prompt: str
    output_format: str
    fps: int
    classifier_free: bool = True  # the family's guidance is classifier-free (else a model input)
    strength: float = 0.8  # with an input image: the share of the schedule run from it (img2img)
    negative_required: bool = False  # guidance runs only with a negative prompt (Qwen-Image's true CFG)
    cache: CacheSpec = CacheSpec()
    lora: tuple[str, float] | None = None  # a registered adapter and its scale (diffusion/lora.py)

    @property
    def cfg(self) -> bool:
        """Classifier-free guidance runs (doubling rows) exactly when the diffusers pipelines do."""
        with_negative = bool(self.negative_prompt) or not self.negative_required
        return self.classifier_free and self.guidance > 1.0 and with_negative


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, message: str, param: str) -> None:
    if not ok:
        raise RequestRejected(message, param=param)


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    _check(_is_int(value), f"{name} must be an integer, got {value!r}", name)
    return value


def parse_params(info: Mapping[str, Any], params: Mapping[str, Any]) -> GenerationParams:
    """Validate ``params`` for a model described by ``info``; defaults come from ``info``."""
    video = info["output"] == "video"
    height = _int(params, "height", info["height"])
    width = _int(params, "width", info["width"])
    multiple = info["size_multiple"]
    for name, value in (("height", height), ("width", width)):
        _check(value > 0 and value % multiple == 0,
               f"{name} must be a positive multiple of {multiple} for this model (its VAE and patch size), "
               f"got {value}", name)
    _check(height * width <= info["max_pixels"],
           f"height x width must be at most {info['max_pixels']} pixels, got {height}x{width}", "size")
    frames = _frames(info, params) if video else None
    if not video:
        _check(params.get("num_frames") is None, "this model generates images; num_frames applies to video", "num_frames")
    steps = _int(params, "num_inference_steps", info["steps"])
    _check(1 <= steps <= info["max_steps"], f"num_inference_steps must be between 1 and {info['max_steps']}, got {steps}",
           "num_inference_steps")
    guidance = params.get("guidance_scale", info["guidance"])
    guidance = info["guidance"] if guidance is None else guidance
    _check(_is_num(guidance) and 0 <= guidance <= 100, f"guidance_scale must be a number between 0 and 100, got {guidance!r}",
           "guidance_scale")
    scheduler = params.get("scheduler") or "default"
    _check(scheduler == "default" or scheduler in info["schedulers"],
           f"unknown scheduler {scheduler!r} for this model; available: default, {', '.join(info['schedulers'])}",
           "scheduler")
    negative = params.get("negative_prompt") or ""
    _check(isinstance(negative, str) and len(negative) <= MAX_PROMPT_CHARS,
           f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS} characters", "negative_prompt")
    classifier_free = info.get("classifier_free", True)
    _check(classifier_free or not negative,
           f"this model ({info.get('family')}) takes no negative_prompt: its guidance_scale is an input of the "
           "model, not classifier-free guidance", "negative_prompt")
    formats = VIDEO_FORMATS if video else IMAGE_FORMATS
    fmt = params.get("output_format") or formats[0]
    _check(fmt in formats, f"output_format must be one of {', '.join(formats)}, got {fmt!r}", "output_format")
    fps = _int(params, "fps", info.get("fps", 16))
    _check(1 <= fps <= 120, f"fps must be between 1 and 120, got {fps}", "fps")
    seed = params.get("seed")
    _check(seed is None or (_is_int(seed) and 0 <= seed < 2**63), "seed must be an integer >= 0", "seed")
    seed = random.getrandbits(63) if seed is None else seed
    strength = params.get("strength", 0.8)
    strength = 0.8 if strength is None else strength
    _check(_is_num(strength) and 0 < strength <= 1, f"strength must be a number in (0, 1], got {strength!r}",
           "strength")
    return GenerationParams(height, width, frames, steps, float(guidance), seed, scheduler, negative, fmt, fps,
                            classifier_free, float(strength), bool(info.get("negative_required", False)),
                            _cache(info, params), _lora(info, params))


def _lora(info: Mapping[str, Any], params: Mapping[str, Any]) -> tuple[str, float] | None:
    """The request's ``lora`` ({name, scale (default 1)}): one of the stage's registered adapters.
    (A stage that runs no denoiser reports no ``loras`` and leaves it to the one that does.)"""
    asked = params.get("lora")
    if asked is None or "loras" not in info:
        return None
    _check(isinstance(asked, dict) and "name" in asked and set(asked) <= {"name", "scale"},
           f"lora must be an object with a name and an optional scale, got {asked!r}", "lora")
    names = info.get("loras") or []
    _check(asked["name"] in names, f"unknown LoRA {asked['name']!r}; this stage has "
           f"{', '.join(map(repr, names)) or 'none'} (options.loras)", "lora.name")
    scale = asked.get("scale", 1.0)
    _check(_is_num(scale) and -10 <= scale <= 10, f"lora.scale must be a number between -10 and 10, got {scale!r}",
           "lora.scale")
    return asked["name"], float(scale)


def _cache(info: Mapping[str, Any], params: Mapping[str, Any]) -> CacheSpec:
    """The request's ``cache`` ({policy, threshold}, each optional) over the stage's default."""
    default = info.get("cache") or {}
    asked = params.get("cache")
    asked = {} if asked is None else asked
    _check(isinstance(asked, dict) and set(asked) <= set(CACHE_FIELDS),
           f"cache must be an object with {' and/or '.join(CACHE_FIELDS)}, got {asked!r}", "cache")
    # (a threshold alone asks for caching, where the stage's default is off)
    fallback = "reuse" if "threshold" in asked and default.get("policy", "off") == "off" else default.get("policy", "off")
    policy = asked.get("policy", fallback)
    _check(policy in CACHE_POLICIES, f"cache.policy must be one of {', '.join(CACHE_POLICIES)}, got {policy!r}",
           "cache.policy")
    threshold = asked.get("threshold")
    threshold = default.get("threshold", 0.0) if threshold is None else threshold
    _check(_is_num(threshold) and 0 <= threshold <= 10, f"cache.threshold must be a number between 0 and 10, "
           f"got {threshold!r}", "cache.threshold")
    return CacheSpec(policy, float(threshold))


def _frames(info: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    frames = _int(params, "num_frames", info["num_frames"])
    t = info["temporal_factor"]
    _check(frames >= 1 and (frames - 1) % t == 0,
           f"num_frames must be 1 more than a multiple of {t} for this model (e.g. {t + 1}, {2 * t + 1}), got {frames}",
           "num_frames")
    _check(frames <= info["max_frames"], f"num_frames must be at most {info['max_frames']}, got {frames}", "num_frames")
    return frames


def check_prompt(prompt: Any) -> str:
    _check(isinstance(prompt, str) and prompt.strip() != "", "prompt must be a non-empty string", "prompt")
    _check(len(prompt) <= MAX_PROMPT_CHARS, f"prompt must be at most {MAX_PROMPT_CHARS} characters", "prompt")
    return prompt


def as_request_params(p: GenerationParams) -> dict[str, Any]:
    """The request parameters that reproduce ``p`` (defaults filled in, the seed drawn)."""
    out = {"height": p.height, "width": p.width, "num_inference_steps": p.steps, "guidance_scale": p.guidance,
           "seed": p.seed, "scheduler": p.scheduler, "negative_prompt": p.negative_prompt,
           "output_format": p.output_format, "fps": p.fps,
           "cache": {"policy": p.cache.policy, "threshold": p.cache.threshold}}
    if p.lora is not None:
        out["lora"] = {"name": p.lora[0], "scale": p.lora[1]}
    if p.num_frames is not None:
        out["num_frames"] = p.num_frames
    return out


def check_params(options: Any, info: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The submit-time check of the ``diffusion`` kind (see graph.kinds): validates, then returns
    the resolved parameters, which every stage of the request then sees. Resolving once makes
    the stages agree on defaults and on a drawn seed. ``strength`` stays out unless given (a
    stage refuses it for a request without an input image)."""
    p = parse_params(info, params)
    resolved = as_request_params(p)
    if params.get("strength") is not None:
        resolved["strength"] = p.strength
    return resolved
