"""Videos for Qwen2-VL-family models, patchified without torchvision.

Each frame goes through the model's own (PIL) image processor, so resizing and normalization
are exactly the processor's; consecutive frames are then paired into temporal patches in the
layout the vision tower expects: rows ordered (t, h/merge, w/merge, merge, merge), each row
(channel, temporal, patch, patch). Frames are taken as sampled at ``fps`` (2 by default, as the
Qwen2.5-Omni processor assumes): models whose temporal positions count time (Qwen2.5-Omni) place
each temporal patch ``temporal_patch_size / fps`` seconds after the previous one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from omnistage.encoders.media import VIDEO_SAMPLE_FPS
from omnistage.encoders.vision import _settings, image_grid


@dataclass
class VideoItem:
    frames: list[Image.Image]
    grid_thw: tuple[int, int, int]
    tokens: int
    hash: str
    processor: Any = field(default=None, repr=False)
    seconds_per_grid: float = 1.0
    _pixels: torch.Tensor | None = field(default=None, repr=False)

    @property
    def pixel_values(self) -> torch.Tensor:
        if self._pixels is None:
            self._pixels = patchify_frames(self.processor, self.frames)
        return self._pixels


def prepare_video(processor: Any, frames: list[Image.Image], fps: float = VIDEO_SAMPLE_FPS) -> VideoItem:
    """Frames (resized to the first frame's size, padded to whole temporal patches) as one item."""
    size = frames[0].size
    frames = [f if f.size == size else f.resize(size, Image.BICUBIC) for f in frames]
    tps = processor.temporal_patch_size
    frames = frames + [frames[-1]] * (-len(frames) % tps)
    _, gh, gw = image_grid(processor, *size, param="video")
    grid = (len(frames) // tps, gh, gw)
    h = hashlib.blake2b(digest_size=16)
    h.update(_settings(processor))
    h.update(repr(("video", len(frames), size, fps)).encode())
    for frame in frames:
        h.update(frame.tobytes())
    return VideoItem(frames, grid, grid[0] * gh * gw // processor.merge_size ** 2, h.hexdigest(), processor,
                     seconds_per_grid=tps / fps)


def patchify_frames(processor: Any, frames: list[Image.Image]) -> torch.Tensor:
    tps, patch = processor.temporal_patch_size, processor.patch_size
    per_frame = []
    for frame in frames:
        out = processor(images=[frame], return_tensors="pt")["pixel_values"]  # frame repeated tps times
        per_frame.append(out.view(out.shape[0], 3, tps, patch, patch)[:, :, 0])  # [rows, C, p, p]
    groups = [torch.stack(per_frame[i:i + tps], dim=2) for i in range(0, len(per_frame), tps)]  # [rows, C, T, p, p]
    return torch.cat([g.reshape(g.shape[0], -1) for g in groups])
