"""Pixels -> files: PNG/JPEG/WebP images; MP4 (H.264 through PyAV), GIF or animated WebP video.

Input is what the decoders give: float pixels in [0, 1], (H, W, 3) for an image, (F, H, W, 3)
for a video. ``raw`` keeps those floats as a tensor (for callers that post-process themselves).
Every output is a dict: ``{"format", "data", "width", "height"}`` (+ ``frames``, ``fps``).
"""
from __future__ import annotations

import io
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from PIL import Image

MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4", "gif": "image/gif"}


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """The diffusers rounding (``numpy_to_pil``): x * 255, rounded, clipped."""
    return (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)


def encode_image(pixels: np.ndarray, fmt: str) -> dict[str, Any]:
    height, width = pixels.shape[:2]
    if fmt == "raw":
        return {"format": "raw", "data": torch.from_numpy(np.ascontiguousarray(pixels)), "width": width,
                "height": height}
    buf = io.BytesIO()
    Image.fromarray(to_uint8(pixels)).save(buf, format=fmt.upper(), **({"quality": 95} if fmt != "png" else {}))
    return {"format": fmt, "data": buf.getvalue(), "width": width, "height": height}


def _mp4(frames: np.ndarray, fps: int) -> bytes:
    import av  # imported here: only video stages need it
    height, width = frames.shape[1:3]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        # yuv420p (what every player decodes) needs even sides: pad by repeating the edge.
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in to_uint8(frames):
            frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _animated(fmt: str) -> Callable[[np.ndarray, int], bytes]:
    def encode(frames: np.ndarray, fps: int) -> bytes:
        images = [Image.fromarray(f) for f in to_uint8(frames)]
        buf = io.BytesIO()
        images[0].save(buf, format=fmt.upper(), save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0, **({"lossless": True} if fmt == "webp" else {}))
        return buf.getvalue()
    return encode


VIDEO_ENCODERS: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "mp4": _mp4, "gif": _animated("gif"), "webp": _animated("webp"),
}


def encode_video(frames: np.ndarray, fmt: str, fps: int) -> dict[str, Any]:
    count, height, width = frames.shape[:3]
    meta = {"width": width, "height": height, "frames": count, "fps": fps}
    if fmt == "raw":
        return {"format": "raw", "data": torch.from_numpy(np.ascontiguousarray(frames)), **meta}
    return {"format": fmt, "data": VIDEO_ENCODERS[fmt](frames, fps), **meta}
