"""Speech to text with an encoder-decoder (Whisper): waiting clips are transcribed together.

A clip longer than the model's window is cut into windows, transcribed window by window and
joined. Each step runs one batched ``generate`` over the windows of up to ``max_batch`` waiting
clips per kind of decoding they ask for (language, task, prompt, temperature: Whisper's
``generate`` takes one of each per call). Whisper features have a fixed window, so windows batch
without padding effects and each transcript equals what ``generate`` gives for that window alone.
A clip without a language has it detected per window, as ``generate`` does; the task token is
always there (``generate`` adds it by itself only with a language), as Whisper decodes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby

import numpy as np


@dataclass(frozen=True)
class Decoding:
    """How a clip is decoded. ``language``: a code such as "fr" (None: detected); ``task``:
    "transcribe" or "translate" (to English); ``prompt``: token ids that go before the
    transcript (Whisper's previous-text prompt, with its <|startofprev|>); ``temperature`` 0:
    greedy."""

    language: str | None = None
    task: str = "transcribe"
    prompt: tuple[int, ...] = ()
    temperature: float = 0.0


@dataclass
class Clip:
    rid: str
    windows: list[np.ndarray]  # mono float32 at the feature extractor's rate, one per window
    max_tokens: int  # per window
    rate: int = 16000  # the windows' sample rate
    decoding: Decoding = Decoding()


def split_windows(samples: np.ndarray, window: int) -> list[np.ndarray]:
    return [samples[i:i + window] for i in range(0, max(1, len(samples)), window)]


@dataclass
class Transcript:
    rid: str
    text: str
    tokens: int
    segments: list[tuple[float, float, str]]  # (start s, end s, text) of each window that says something
    duration: float  # seconds of audio
    language: str | None = None  # the clip's (its first window's, when detected)


class TranscribeEngine:
    def __init__(self, transcribe: Callable[[list[np.ndarray], int, Decoding], tuple[list[list[int]], list[str | None]]],
                 decode: Callable[[list[int]], str], max_batch: int) -> None:
        # windows, token budget, decoding -> (generated ids per window up to eos, each window's language)
        self._transcribe = transcribe
        self._decode = decode
        self.max_batch = max_batch
        self.waiting: list[Clip] = []

    def add(self, clip: Clip) -> None:
        self.waiting.append(clip)

    def abort(self, rid: str) -> None:
        self.waiting = [c for c in self.waiting if c.rid != rid]

    def has_work(self) -> bool:
        return bool(self.waiting)

    def step(self) -> list[Transcript]:
        batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
        out = []
        for decoding, clips in groupby(sorted(batch, key=lambda c: repr(c.decoding)), key=lambda c: c.decoding):
            out += self._run(list(clips), decoding)
        return out

    def _run(self, batch: list[Clip], decoding: Decoding) -> list[Transcript]:
        # Greedy decoding: a clip's first k tokens do not depend on the budget, so one call with
        # the largest budget serves every clip, each cut to its own. (A sampled clip's draws
        # depend on its batch: temperature > 0 is not repeatable.)
        rows, languages = self._transcribe([w for c in batch for w in c.windows], max(c.max_tokens for c in batch),
                                           decoding)
        out, at = [], 0
        for clip in batch:
            ids = [r[:clip.max_tokens] for r in rows[at:at + len(clip.windows)]]
            language = languages[at]
            at += len(clip.windows)
            texts = [self._decode(i).strip() for i in ids]
            bounds = np.cumsum([0] + [len(w) for w in clip.windows]) / clip.rate
            segments = [(float(bounds[k]), float(bounds[k + 1]), t) for k, t in enumerate(texts) if t]
            out.append(Transcript(clip.rid, " ".join(t for _, _, t in segments), sum(len(i) for i in ids), segments,
                                  float(bounds[-1]), language))
        return out
