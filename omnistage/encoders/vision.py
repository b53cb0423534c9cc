"""Images for Qwen2-VL-family models: preprocessing (PIL image processor) and the vision tower.

An ``ImageItem`` is one image as the language model will see it: its patch grid, how many LM
tokens it becomes, and a content hash over the image (its file's bytes, or its pixels when it
was given decoded) and every preprocessing parameter. Those come from the image's header and
bytes alone, so a request whose image is already in a cache never pays for decoding, resizing
or normalizing it; pixels and patches are computed only when the image must actually be
encoded.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from omnistage.encoders.media import LazyImage, MediaError, open_image


@dataclass
class ImageItem:
    image: LazyImage | None
    grid_thw: tuple[int, int, int]
    tokens: int  # LM positions after the spatial merge
    hash: str
    processor: Any = field(default=None, repr=False)
    _pixels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def pixel_values(self) -> torch.Tensor:
        """[patches, channels * temporal * patch * patch], computed on first use."""
        if self._pixels is None:
            assert self.image is not None, "an item without its image carries its pixels"
            out = self.processor(images=[self.image.decode()], return_tensors="pt")
            assert tuple(out["image_grid_thw"][0].tolist()) == self.grid_thw, "grid prediction disagrees"
            self._pixels = out["pixel_values"]
        return self._pixels


def _settings(processor: Any) -> bytes:
    """Every preprocessing parameter, canonically encoded (part of each image's hash)."""
    cached = getattr(processor, "_omnistage_settings", None)
    if cached is None:
        cached = json.dumps(processor.to_dict(), sort_keys=True, default=str).encode()
        processor._omnistage_settings = cached
    return cached


def image_grid(processor: Any, width: int, height: int, param: str = "images") -> tuple[int, int, int]:
    """The patch grid of an image of this size after the model's resize. Raises MediaError for a
    size the model cannot take (an extreme aspect ratio)."""
    patch, merge = processor.patch_size, processor.merge_size
    try:
        h, w = smart_resize(height, width, factor=patch * merge, min_pixels=processor.size["shortest_edge"],
                            max_pixels=processor.size["longest_edge"])
    except ValueError as exc:
        raise MediaError(f"an image of {width}x{height} cannot be taken by this model: {exc}", param=param) from None
    return (1, h // patch, w // patch)


def prepare_images(processor: Any, images: list[LazyImage | Image.Image]) -> list[ImageItem]:
    """Items for images opened by ``open_image`` (decoded when first needed) or given decoded."""
    merge = processor.merge_size ** 2
    items = []
    for given in images:
        image = open_image(given)
        grid = image_grid(processor, *image.size)
        h = hashlib.blake2b(digest_size=16)
        h.update(_settings(processor))
        image.fingerprint(h)
        items.append(ImageItem(image, grid, grid[0] * grid[1] * grid[2] // merge, h.hexdigest(), processor))
    return items


class VisionTower:
    """The model's vision encoder; many images (of any sizes) packed into one forward."""

    def __init__(self, model: Any) -> None:
        self.visual = model.model.visual
        self.device = next(self.visual.parameters()).device
        self.dtype = next(self.visual.parameters()).dtype

    @torch.inference_mode()
    def encode(self, items: list[ImageItem]) -> list[torch.Tensor]:
        if not items:
            return []
        pixels = torch.cat([it.pixel_values for it in items]).to(self.device, self.dtype)
        grids = torch.tensor([it.grid_thw for it in items], device=self.device)
        out = self.visual(pixels, grid_thw=grids)
        merged = out.pooler_output if hasattr(out, "pooler_output") else out
        return list(torch.split(merged, [it.tokens for it in items]))
