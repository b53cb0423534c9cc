"""Decoding user media with limits checked before the expensive part.

Sources: raw bytes, ``data:`` URLs, local paths (only under an allowed directory), PIL images,
uint8 HWC tensors, and for audio float arrays. Every failure is a ``MediaError`` (a 4xx
``RequestRejected``) naming what was wrong, never a crash of the stage that decodes it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from omnistage.errors import RequestRejected

IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
                 "BMP": "image/bmp"}


class MediaError(RequestRejected):
    pass


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 20 << 20
    max_pixels: int = 4096 * 4096
    max_audio_seconds: float = 600.0
    max_frames: int = 256
    allowed_dir: str | None = None  # local paths are refused unless under this directory


DEFAULT_LIMITS = MediaLimits()


def read_source(src: Any, kind: str, limits: MediaLimits, param: str) -> tuple[bytes, str | None]:
    """Bytes of a media source and the MIME type it declared (data URLs), size-checked."""
    mime = None
    if isinstance(src, str) and src.startswith("data:"):
        head, sep, payload = src.partition(",")
        if not sep or ";base64" not in head:
            raise MediaError(f"{kind} data URL must look like data:<mime>;base64,<data>", param=param)
        mime = head[5:].split(";")[0] or None
        if len(payload) * 3 // 4 > limits.max_bytes:
            raise MediaError(f"{kind} is larger than {limits.max_bytes} bytes", param=param, status=413)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(f"{kind} data URL is not valid base64", param=param) from None
    elif isinstance(src, str):
        data = _read_path(src, kind, limits, param)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        raise MediaError(f"cannot read {kind} from a {type(src).__name__}", param=param)
    if not data:
        raise MediaError(f"{kind} is empty", param=param)
    if len(data) > limits.max_bytes:
        raise MediaError(f"{kind} is larger than {limits.max_bytes} bytes", param=param, status=413)
    return data, mime


def _read_path(path: str, kind: str, limits: MediaLimits, param: str) -> bytes:
    if path.startswith(("http://", "https://")):
        raise MediaError(f"remote {kind} URLs are not fetched; send the data inline", param=param)
    if limits.allowed_dir is None:
        raise MediaError(f"local {kind} paths are not allowed here; send the data inline", param=param)
    resolved = Path(path).expanduser().resolve()
    root = Path(limits.allowed_dir).resolve()
    if root not in resolved.parents:
        raise MediaError(f"{kind} path must be under {root}", param=param)
    try:
        with open(resolved, "rb") as f:
            return f.read(limits.max_bytes + 1)
    except OSError as exc:
        raise MediaError(f"cannot read {kind} file: {exc.strerror}", param=param) from None


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


class LazyImage:
    """An image whose header is checked (format, declared type, pixel count) and whose pixels
    are decoded on first use. Given as file bytes, its ``fingerprint`` is taken over those bytes,
    so a request whose image a cache already holds never pays for decoding it; the same bytes
    always decode to the same pixels, so the key is exact."""

    def __init__(self, data: bytes | None, image: Image.Image | None, param: str,
                 digest: bytes | None = None, size: tuple[int, int] = (0, 0)) -> None:
        # The file's bytes until decoded (then dropped: the pixels replace them), and their digest.
        self.data = data
        self.digest = file_digest(data) if data is not None else digest
        self._image = image  # opened (header read) until decoded, then the RGB image
        self._size = image.size if image is not None else size
        self._decoded = data is None and digest is None
        self.param = param

    @classmethod
    def by_reference(cls, digest: bytes, size: tuple[int, int], param: str = "images") -> LazyImage:
        """An image known only by its file's digest and its size: enough to count its tokens and
        key a cache, never to decode."""
        return cls(None, None, param, digest, size)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def decode(self, convert: Callable[[Image.Image], Image.Image] = _rgb) -> Image.Image:
        """The RGB image (or what ``convert`` makes of the file's first frame), decoded once; a
        MediaError if the data past the header is broken."""
        if self._image is None:
            raise RuntimeError("an image given by reference cannot be decoded here (its file stayed upstream)")
        if not self._decoded:
            try:
                self._image.seek(0)  # first frame of an animation
                self._image = convert(self._image)
            except (OSError, ValueError, SyntaxError) as exc:
                raise MediaError(f"cannot decode image: {exc}", param=self.param) from None
            self._decoded, self.data = True, None
        return self._image

    def fingerprint(self, h: Any) -> None:
        """Feed what identifies this image into the hash ``h``."""
        if self.digest is not None:
            h.update(b"file:")
            h.update(self.digest)
        else:
            h.update(repr((self._image.mode, self._image.size)).encode())
            h.update(self._image.tobytes())


def load_image(src: Any, limits: MediaLimits = DEFAULT_LIMITS, param: str = "images") -> Image.Image:
    """An RGB PIL image. Pixel count is checked from the header, before decoding."""
    return open_image(src, limits, param).decode()


def load_mask(src: Any, limits: MediaLimits = DEFAULT_LIMITS, param: str = "mask") -> Image.Image:
    """An inpainting mask as a grayscale image, white where the picture is repainted. A mask with
    transparency reads as OpenAI's images API reads it (its fully transparent pixels are the ones
    edited); one without, as diffusers reads it (white repaints, black keeps)."""
    if isinstance(src, Image.Image):
        return _mask_pixels(_check_pixels(src, limits, param))
    return open_image(src, limits, param).decode(_mask_pixels)


def _mask_pixels(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A").point(lambda a: 255 if a == 0 else 0)
    return image.convert("L")


def file_digest(data: bytes) -> bytes:
    """What keys an image file in every cache (SHA-256: hardware-accelerated here, about twice
    BLAKE2b's speed)."""
    return hashlib.sha256(data).digest()


def open_image(src: Any, limits: MediaLimits = DEFAULT_LIMITS, param: str = "images") -> LazyImage:
    """An image checked from its header only; its pixels are decoded by ``decode()``."""
    if isinstance(src, LazyImage):
        return src
    if isinstance(src, Image.Image):
        return LazyImage(None, _check_pixels(src, limits, param).convert("RGB"), param)
    if isinstance(src, torch.Tensor):
        if src.dtype != torch.uint8 or src.ndim != 3 or src.shape[-1] not in (1, 3, 4):
            raise MediaError("an image tensor must be uint8 [height, width, channels]", param=param)
        return LazyImage(None, _check_pixels(Image.fromarray(src.numpy()), limits, param).convert("RGB"), param)
    data, mime = read_source(src, "image", limits, param)
    if mime is not None and not mime.startswith("image/"):
        raise MediaError(f"expected an image, the data URL says {mime}", param=param)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise MediaError(f"image has more than {limits.max_pixels} pixels", param=param, status=413) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"cannot decode image: {exc}", param=param) from None
    fmt = image.format
    if fmt not in IMAGE_FORMATS:
        raise MediaError(f"unsupported image format {fmt}; send PNG, JPEG, WebP or GIF", param=param)
    if mime is not None and mime != IMAGE_FORMATS[fmt] and not (mime == "image/jpg" and fmt == "JPEG"):
        raise MediaError(f"the data URL says {mime} but the data is {IMAGE_FORMATS[fmt]}", param=param)
    return LazyImage(data, _check_pixels(image, limits, param), param)


def _check_pixels(image: Image.Image, limits: MediaLimits, param: str) -> Image.Image:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise MediaError(f"image is {width}x{height}; at most {limits.max_pixels} pixels are accepted",
                         param=param, status=413)
    if width < 1 or height < 1:
        raise MediaError("image has no pixels", param=param)
    return image


def load_audio(src: Any, sampling_rate: int, limits: MediaLimits = DEFAULT_LIMITS,
               param: str = "audio") -> np.ndarray:
    """Mono float32 samples at ``sampling_rate``. WAV/FLAC/OGG bytes, data URLs, or arrays
    given as ``{"array": ..., "sampling_rate": ...}``."""
    if isinstance(src, dict):
        samples, rate = np.asarray(src.get("array"), dtype=np.float32), int(src.get("sampling_rate", 0))
    elif isinstance(src, (np.ndarray, torch.Tensor)):
        raise MediaError('raw audio arrays need their rate: {"array": ..., "sampling_rate": ...}', param=param)
    else:
        data, mime = read_source(src, "audio", limits, param)
        if mime is not None and not mime.startswith("audio/"):
            raise MediaError(f"expected audio, the data URL says {mime}", param=param)
        samples, rate = _decode_audio(data, limits, param)
    if rate <= 0:
        raise MediaError("audio sampling rate must be positive", param=param)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise MediaError("audio has no samples", param=param)
    if samples.size / rate > limits.max_audio_seconds:
        raise MediaError(f"audio is {samples.size / rate:.0f} s long; at most {limits.max_audio_seconds:.0f} s",
                         param=param, status=413)
    if rate != sampling_rate:
        import soxr
        samples = soxr.resample(samples.astype(np.float32, copy=False), rate, sampling_rate)
    return samples.astype(np.float32, copy=False)


def _decode_audio(data: bytes, limits: MediaLimits, param: str) -> tuple[np.ndarray, int]:
    import soundfile
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.frames / max(1, info.samplerate) > limits.max_audio_seconds:
            raise MediaError(f"audio is {info.duration:.0f} s long; at most {limits.max_audio_seconds:.0f} s",
                             param=param, status=413)
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except MediaError:
        raise
    except (RuntimeError, ValueError, soundfile.LibsndfileError) as exc:
        raise MediaError(f"cannot decode audio (WAV, FLAC or OGG expected): {exc}", param=param) from None
    return np.asarray(samples), int(rate)


# Frames per second a video is sampled at (the Qwen2-VL family's processors' default).
VIDEO_SAMPLE_FPS = 2.0


@dataclass(frozen=True)
class VideoClip:
    frames: list[Image.Image]
    fps: float  # frames per second of ``frames`` as sampled


def load_video(src: Any, limits: MediaLimits = DEFAULT_LIMITS, param: str = "video",
               max_frames: int | None = None, fps: float = VIDEO_SAMPLE_FPS) -> VideoClip:
    """Frames as RGB images. A video file is decoded with PyAV and sampled at ``fps`` by its
    own frame rate (as the reference processors sample); a list of images is taken as already
    sampled at ``fps``. Either is thinned evenly to ``max_frames``, which lowers its rate."""
    cap = min(max_frames or limits.max_frames, limits.max_frames)
    if isinstance(src, (list, tuple)):
        if not src:
            raise MediaError("video has no frames", param=param)
        if len(src) > limits.max_frames:
            raise MediaError(f"video has {len(src)} frames; at most {limits.max_frames}", param=param, status=413)
        frames, rate = [load_image(f, limits, param) for f in src], fps
    else:
        data, mime = read_source(src, "video", limits, param)
        if mime is not None and not mime.startswith("video/"):
            raise MediaError(f"expected a video, the data URL says {mime}", param=param)
        decoded, source_fps = _decode_video(data, limits, param)
        seconds = len(decoded) / source_fps
        wanted = max(1, min(len(decoded), int(seconds * fps)))
        frames = [decoded[int(i * len(decoded) / wanted)] for i in range(wanted)]
        rate = min(fps, source_fps)
    if len(frames) > cap:
        rate *= cap / len(frames)
        frames = [frames[int(i * len(frames) / cap)] for i in range(cap)]
    return VideoClip(frames, rate)


def load_video_audio(src: Any, sampling_rate: int, limits: MediaLimits = DEFAULT_LIMITS,
                     param: str = "video") -> np.ndarray | None:
    """A video file's sound track as mono float32 samples at ``sampling_rate``; None for frames
    given as a list or a file without sound."""
    if isinstance(src, (list, tuple)):
        return None
    import av
    data, _ = read_source(src, "video", limits, param)
    chunks = []
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                return None
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaError(f"cannot decode the video's sound: {exc}", param=param) from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size / sampling_rate > limits.max_audio_seconds:
        raise MediaError(f"the video's sound is {samples.size / sampling_rate:.0f} s long; at most "
                         f"{limits.max_audio_seconds:.0f} s", param=param, status=413)
    return samples if samples.size else None


def _decode_video(data: bytes, limits: MediaLimits, param: str) -> tuple[list[Image.Image], float]:
    """Every frame (up to a bound) and the stream's frame rate."""
    import av
    frames: list[Image.Image] = []
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or VIDEO_SAMPLE_FPS)
            if stream.width * stream.height > limits.max_pixels:
                raise MediaError(f"video frames are {stream.width}x{stream.height}; too many pixels",
                                 param=param, status=413)
            for frame in container.decode(stream):
                if len(frames) >= limits.max_frames * 8:
                    break
                frames.append(frame.to_image().convert("RGB"))
    except MediaError:
        raise
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise MediaError(f"cannot decode video: {exc}", param=param) from None
    if not frames:
        raise MediaError("video has no frames", param=param)
    return frames, rate
