"""Images for Qwen2-VL-family models: preprocessing (PIL image processor) and the vision tower.

An ``ImageItem`` is one preprocessed image: its patches, its patch grid, how many LM tokens it
becomes and a content hash over the patches and grid, which covers the decoded pixels and
every preprocessing parameter that changed them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image


@dataclass
class ImageItem:
    pixel_values: torch.Tensor  # [patches, channels * temporal * patch * patch]
    grid_thw: tuple[int, int, int]
    tokens: int  # LM positions after the spatial merge
    hash: str


def content_hash(pixel_values: torch.Tensor, grid_thw: tuple[int, ...]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(grid_thw)).encode())
    h.update(pixel_values.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def prepare_images(processor: Any, images: list[Image.Image]) -> list[ImageItem]:
    merge = getattr(processor, "merge_size", 2) ** 2
    items = []
    for image in images:
        out = processor(images=[image], return_tensors="pt")
        grid = tuple(int(v) for v in out["image_grid_thw"][0].tolist())
        pixels = out["pixel_values"]
        items.append(ImageItem(pixels, grid, grid[0] * grid[1] * grid[2] // merge, content_hash(pixels, grid)))
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
