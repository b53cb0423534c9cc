"""Compressed speech formats (``mp3``, ``opus``, ``aac``), encoded with PyAV as the audio comes.

Each format is a container a player reads while it arrives: MP3 frames, Ogg pages of Opus
(flushed every 20 ms instead of Ogg's default second), AAC in ADTS frames. The encoder writes
into a sink that cannot seek, so the muxer never goes back to patch a header the client already
has. Bit rates are OpenAI's usual ones for speech (MP3 and AAC 128 kb/s, Opus 64 kb/s).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

# format -> (container, encoder, bit rate, muxer options)
CODECS: dict[str, tuple[str, str, int, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", 128_000, {}),
    "opus": ("ogg", "libopus", 64_000, {"page_duration": "20000"}),
    "aac": ("adts", "aac", 128_000, {}),
}
MEDIA = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}


class _Sink:
    """A write-only file for the muxer (no ``seek``): what it wrote since the last ``take``."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class StreamEncoder:
    """Mono float samples at ``rate`` in, the format's bytes out as soon as the encoder emits them."""

    def __init__(self, fmt: str, rate: int) -> None:
        import av
        container, codec, bit_rate, options = CODECS[fmt]
        self._sink, self.rate, self._pts = _Sink(), rate, 0
        self._out = av.open(self._sink, "w", format=container, options=options)
        self._stream = self._out.add_stream(codec, rate=rate, layout="mono")
        self._stream.bit_rate = bit_rate

    def feed(self, samples: torch.Tensor) -> bytes:
        if samples.numel():
            import av
            frame = av.AudioFrame.from_ndarray(samples.float().numpy().astype(np.float32)[None, :], format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = self.rate, self._pts
            self._pts += samples.numel()
            self._mux(self._stream.encode(frame))
        return self._sink.take()

    def close(self) -> bytes:
        """The encoder's last frames and the container's end."""
        self._mux(self._stream.encode(None))
        self._out.close()
        return self._sink.take()

    def _mux(self, packets: list[Any]) -> None:
        for packet in packets:
            self._out.mux(packet)


def encode_clip(samples: torch.Tensor, rate: int, fmt: str) -> bytes:
    """A whole clip in ``fmt``."""
    encoder = StreamEncoder(fmt, rate)
    return encoder.feed(samples) + encoder.close()
