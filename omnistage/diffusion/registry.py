"""Which family serves a diffusers pipeline class (``_class_name`` in ``model_index.json``)."""
from __future__ import annotations

from omnistage.diffusion.families import (Family, Flux, StableDiffusion, StableDiffusion3, StableDiffusionXL, Wan,
                                          load_config)
from omnistage.diffusion.qwen_image import QwenImage

FAMILIES: dict[str, type[Family]] = {
    "StableDiffusionPipeline": StableDiffusion,
    "StableDiffusionXLPipeline": StableDiffusionXL,
    "StableDiffusion3Pipeline": StableDiffusion3,
    "WanPipeline": Wan,
    "FluxPipeline": Flux,
    "QwenImagePipeline": QwenImage,
}


def family_class(path: str) -> type[Family]:
    pipeline = load_config(path).get("_class_name")
    if pipeline not in FAMILIES:
        raise ValueError(f"{path}: pipeline {pipeline!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[pipeline]
