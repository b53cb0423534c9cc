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
from dataclasses import dataclass, field
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
    ids: list[list[int]] = field(default_factory=list)  # of the windows decoded so far, in order
    texts: list[str] = field(default_factory=list)  # and their text
    language: str | None = None  # its first window's
    sent: int = 0  # windows whose text went out in a delta
    said: bool = False  # some delta so far said something

    @property
    def done(self) -> bool:
        return len(self.ids) == len(self.windows)


def split_windows(samples: np.ndarray, window: int) -> list[np.ndarray]:
    return [samples[i:i + window] for i in range(0, max(1, len(samples)), window)]


@dataclass
class Transcript:
    """What a step decoded of a clip: ``delta``, the text of its newly decoded windows (the
    deltas of a clip join into its whole transcript); once ``finished``, the whole ``text``,
    its timed segments and duration."""

    rid: str
    delta: str
    finished: bool
    text: str = ""
    tokens: int = 0
    segments: list[tuple[float, float, str]] = field(default_factory=list)  # (start s, end s, text) of each window that says something
    duration: float = 0.0  # seconds of audio
    language: str | None = None  # the clip's (its first window's, when detected)


class TranscribeEngine:
    """Each step decodes up to ``max_batch`` windows: the oldest clips' next windows first, so a
    long clip's transcript comes window by window while other clips join the batch."""

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
        rows: list[tuple[Clip, int]] = []  # (clip, window)
        for clip in self.waiting:
            start = len(clip.ids)
            take = min(len(clip.windows) - start, self.max_batch - len(rows))
            rows += [(clip, start + k) for k in range(take)]
        by_decoding = groupby(sorted(rows, key=lambda r: repr(r[0].decoding)), key=lambda r: r[0].decoding)
        for decoding, group in by_decoding:
            self._run(list(group), decoding)
        touched = list(dict.fromkeys(clip.rid for clip, _ in rows))
        out = [self._emit(clip) for clip in self.waiting if clip.rid in touched]
        self.waiting = [c for c in self.waiting if not c.done]
        return out

    def _run(self, rows: list[tuple[Clip, int]], decoding: Decoding) -> None:
        # Greedy decoding: a window's first k tokens do not depend on the budget, so one call
        # with the largest budget serves every window, each cut to its clip's. (A sampled
        # window's draws depend on its batch: temperature > 0 is not repeatable.)
        ids, languages = self._transcribe([clip.windows[k] for clip, k in rows], max(c.max_tokens for c, _ in rows),
                                          decoding)
        for (clip, k), row, language in zip(rows, ids, languages):
            clip.language = language if k == 0 else clip.language
            clip.ids.append(row[:clip.max_tokens])  # (rows of a clip come in window order)
            clip.texts.append(self._decode(clip.ids[-1]).strip())

    def _emit(self, clip: Clip) -> Transcript:
        texts = clip.texts
        new = [t for t in texts[clip.sent:] if t]
        delta = (" " if clip.said and new else "") + " ".join(new)
        clip.said, clip.sent = clip.said or bool(new), len(texts)
        if not clip.done:
            return Transcript(clip.rid, delta, False)
        bounds = np.cumsum([0] + [len(w) for w in clip.windows]) / clip.rate
        segments = [(float(bounds[k]), float(bounds[k + 1]), t) for k, t in enumerate(texts) if t]
        return Transcript(clip.rid, delta, True, " ".join(t for _, _, t in segments), sum(map(len, clip.ids)),
                          segments, float(bounds[-1]), clip.language)
