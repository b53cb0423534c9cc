"""Compressed speech formats: streamed as encoded, decoding to the input within codec tolerance."""
import io

import numpy as np
import pytest
import torch

from omnistage.api.audio_codecs import CODECS, StreamEncoder, encode_clip

RATE = 24000


def decoded(data: bytes, rate: int) -> np.ndarray:
    """A compressed file's samples (PyAV), at ``rate``."""
    import av
    import soxr
    with av.open(io.BytesIO(data)) as container:
        got = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        source = container.streams.audio[0].rate
    return soxr.resample(got, source, rate) if source != rate else got


def snr_db(ref: np.ndarray, got: np.ndarray, max_delay: int = 3000) -> float:
    """Signal to noise of ``got`` against ``ref`` after the codec's delay (the best alignment)."""
    n = min(len(ref), len(got) - max_delay)
    delay = max(range(max_delay), key=lambda d: float(np.dot(ref[:n], got[d:d + n])))
    err = ref[:n] - got[delay:delay + n]
    return float(10 * np.log10(np.sum(ref[:n] ** 2) / np.sum(err ** 2)))


def speechlike(seconds: float = 2.0) -> torch.Tensor:
    t = np.arange(int(RATE * seconds)) / RATE
    rng = np.random.default_rng(0)
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 + 0.1 * np.sin(2 * np.pi * 1234 * t)
    return torch.from_numpy((tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32))


@pytest.mark.parametrize("fmt", sorted(CODECS))
def test_streamed_encoding_decodes_to_the_input(fmt):
    """Fed in 125 ms chunks, bytes come out before the end, and the whole decodes to the input
    within 20 dB SNR (the issue's bar for lossy codecs); a silent or shifted decode would fail."""
    x = speechlike()
    encoder = StreamEncoder(fmt, RATE)
    pieces = [encoder.feed(x[i:i + 3000]) for i in range(0, len(x), 3000)] + [encoder.close()]
    assert sum(1 for p in pieces[:-1] if p) >= 4
    got = decoded(b"".join(pieces), RATE)
    assert snr_db(x.numpy(), got) >= 20
    assert abs(len(got) - len(x)) < 0.1 * RATE
    assert snr_db(x.numpy(), decoded(encode_clip(x, RATE, fmt), RATE)) >= 20
