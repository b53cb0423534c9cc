"""Speech to text with an encoder-decoder (Whisper): waiting clips are transcribed together.

A clip longer than the model's window is cut into windows, transcribed window by window and
joined. Each step runs one batched ``generate`` over the windows of up to ``max_batch`` waiting
clips per kind of decoding they ask for (language, task, prompt, temperature, word timestamps:
Whisper's ``generate`` takes one of each per call) and token budget. Whisper features have a
fixed window, so windows batch without padding effects and each transcript equals what
``generate`` gives for that window alone.
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
    greedy; ``words``: decode with timestamp tokens and time each word (from the alignment
    heads' cross-attention, as the ASR pipeline does)."""

    language: str | None = None
    task: str = "transcribe"
    prompt: tuple[int, ...] = ()
    temperature: float = 0.0
    words: bool = False


Timed = tuple[float, float, str]  # (start s, end s, text)


@dataclass
class Decoded:
    """One window as decoded: its ids up to eos, its language, its timed words (when asked)."""

    ids: list[int]
    language: str | None
    words: list[Timed] = field(default_factory=list)


@dataclass
class Clip:
    rid: str
    windows: list[np.ndarray]  # mono float32 at the feature extractor's rate, one per window
    max_tokens: int  # per window
    rate: int = 16000  # the windows' sample rate
    decoding: Decoding = Decoding()
    ids: list[list[int]] = field(default_factory=list)  # of the windows decoded so far, in order
    texts: list[str] = field(default_factory=list)  # and their text
    words: list[Timed] = field(default_factory=list)  # timed words of the windows so far, in clip time
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
    segments: list[Timed] = field(default_factory=list)  # of each window that says something
    duration: float = 0.0  # seconds of audio
    language: str | None = None  # the clip's (its first window's, when detected)
    words: list[Timed] | None = None  # when asked


class TranscribeEngine:
    """Each step decodes up to ``max_batch`` windows: the oldest clips' next windows first, so a
    long clip's transcript comes window by window while other clips join the batch."""

    def __init__(self, transcribe: Callable[[list[np.ndarray], int, Decoding], list[Decoded]],
                 decode: Callable[[list[int]], str], max_batch: int) -> None:
        # windows, token budget, decoding -> each window decoded
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
        by_decoding = groupby(sorted(rows, key=_call_key), key=_call_key)
        for _, group in by_decoding:
            self._run(list(group))
        touched = list(dict.fromkeys(clip.rid for clip, _ in rows))
        out = [self._emit(clip) for clip in self.waiting if clip.rid in touched]
        self.waiting = [c for c in self.waiting if not c.done]
        return out

    def _run(self, rows: list[tuple[Clip, int]]) -> None:
        """One ``generate`` call for rows of one decoding and budget."""
        # (A sampled window's draws depend on its batch: temperature > 0 is not repeatable.)
        first = rows[0][0]
        decoded = self._transcribe([clip.windows[k] for clip, k in rows], first.max_tokens, first.decoding)
        for (clip, k), window in zip(rows, decoded):
            clip.language = window.language if k == 0 else clip.language
            clip.ids.append(window.ids)  # (rows of a clip come in window order)
            clip.texts.append(self._decode(clip.ids[-1]).strip())
            start = k * len(clip.windows[0]) / clip.rate  # (every window but the last is full)
            clip.words += [(start + a, start + b, text) for a, b, text in window.words]

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
                          segments, float(bounds[-1]), clip.language, clip.words if clip.decoding.words else None)


def _call_key(row: tuple[Clip, int]) -> str:
    """Rows decoded by one ``generate`` call: same decoding and budget. (Whisper's ``generate``
    starts a new segment after a timestamp pair, even without timestamps asked, so a window's
    first k tokens can depend on the budget: a row is never cut to a smaller one afterwards.)"""
    clip = row[0]
    return repr((clip.decoding, clip.max_tokens))
