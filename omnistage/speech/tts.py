"""Text to speech: batched mel-spectrogram generation, then the vocoder in streamed chunks.

A step first generates the spectrograms of waiting requests in one batched call (SpeechT5's own
``generate``), then runs the vocoder over the next chunk of every request that has frames left,
so audio leaves the stage chunk by chunk while later requests are still being generated.

Batches only hold texts of the same token length: the decoder's length cap is proportional to
the (padded) input length, so mixing lengths would change when a request may stop.

The vocoder (HiFi-GAN) is convolutional: a chunk is vocoded with ``context`` frames on each
side and trimmed, which equals vocoding the whole spectrogram when the context covers the
receptive field (tested).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SpeechJob:
    rid: str
    ids: list[int]
    voice: torch.Tensor  # speaker embedding
    speed: float = 1.0
    frames: torch.Tensor | None = None  # (n, mels) once generated
    sent: int = 0  # frames already vocoded


@dataclass
class AudioChunk:
    rid: str
    samples: torch.Tensor  # float32 mono
    last: bool


def stretch(frames: torch.Tensor, speed: float) -> torch.Tensor:
    """Faster or slower speech at the same pitch: resample the spectrogram in time."""
    if speed == 1.0:
        return frames
    length = max(1, round(frames.shape[0] / speed))
    return F.interpolate(frames.T[None], size=length, mode="linear", align_corners=False)[0].T


class TtsEngine:
    def __init__(self, generate: Callable[[list[SpeechJob]], list[torch.Tensor]],
                 vocoder: Callable[[torch.Tensor], torch.Tensor], hop: int, max_batch: int,
                 chunk_frames: int = 32, context: int = 16) -> None:
        self._generate = generate
        self._vocoder = vocoder
        self.hop = hop
        self.max_batch = max_batch
        self.chunk_frames = chunk_frames
        self.context = context
        self.waiting: list[SpeechJob] = []
        self.speaking: dict[str, SpeechJob] = {}

    def add(self, job: SpeechJob) -> None:
        self.waiting.append(job)

    def abort(self, rid: str) -> None:
        self.waiting = [j for j in self.waiting if j.rid != rid]
        self.speaking.pop(rid, None)

    def has_work(self) -> bool:
        return bool(self.waiting or self.speaking)

    def step(self) -> list[AudioChunk]:
        if self.waiting:
            length = len(self.waiting[0].ids)
            batch = [j for j in self.waiting if len(j.ids) == length][:self.max_batch]
            for job, frames in zip(batch, self._generate(batch)):
                job.frames = stretch(frames, job.speed)
                self.speaking[job.rid] = job
            self.waiting = [j for j in self.waiting if j.rid not in self.speaking]
        out = []
        for job in list(self.speaking.values()):
            out.append(self._next_chunk(job))
            if out[-1].last:
                del self.speaking[job.rid]
        return out

    def _next_chunk(self, job: SpeechJob) -> AudioChunk:
        assert job.frames is not None
        total = job.frames.shape[0]
        start, end = job.sent, min(total, job.sent + self.chunk_frames)
        lo, hi = max(0, start - self.context), min(total, end + self.context)
        with torch.inference_mode():
            wave = self._vocoder(job.frames[lo:hi])
        samples = wave[(start - lo) * self.hop:(end - lo) * self.hop].float()
        job.sent = end
        return AudioChunk(job.rid, samples, last=end >= total)
