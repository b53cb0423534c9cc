"""One request inside the AR engine: its tokens, KV blocks and progress."""
from __future__ import annotations

import enum
from array import array
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from omnistage.ar_engine.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    HELD = "held"  # out of the batch, blocks kept (a prefill waiting to hand its KV over)
    FINISHED = "finished"


@dataclass
class MediaSpan:
    """Placeholder tokens [start, start+length) that stand for one media item, or for rows
    [offset, offset+length) of its embeddings when the item is split into several spans (a
    video's frames interleaved with its sound track).

    For prefix caching those positions hash with ``content_hash`` and their offset inside the
    item, so the same image in the same place reuses KV and a different image never does.
    ``embeds`` may stay None while the span's positions come from the prefix cache; the runner
    asks its media encoder for them (from ``source``) only if it must compute those positions.
    """

    start: int
    length: int
    content_hash: str
    embeds: Any = None  # [length, hidden] tensor merged into inputs_embeds
    grid_thw: Any = None  # (t, h, w) patch grid, for M-RoPE positions
    source: Any = None  # what the runner's media encoder needs to compute ``embeds``
    offset: int = 0  # the item's embedding row this span starts at


class FedInputs(Protocol):
    """Per-position input embeddings from outside the model, added to (or replacing) the token
    embeddings; they may arrive while the sequence runs."""

    def available(self) -> int:
        """How many positions (from 0) have their rows."""

    def rows(self, start: int, n: int) -> tuple[Any, Any]:
        """Rows [n, hidden] for positions [start, start+n), and a bool [n] mask of the positions
        whose token embedding is kept (added to); elsewhere the row replaces it."""


@dataclass
class Sequence:
    rid: str
    prompt: list[int]
    sampling: SamplingParams
    media: tuple[MediaSpan, ...] = ()
    # 3-row M-RoPE positions of the prompt ([3, len]) and the text offset after it (Qwen2-VL).
    mrope_positions: Any = None
    mrope_delta: int = 0
    # Input embeddings added per position from outside the model (see ``FedInputs``): a talker's
    # conditioning on a thinker still decoding. Positions whose rows have not come are not computed.
    fed: Any = None
    reuse_prefix: bool = True  # False: compute every position (its states are wanted), reuse no cached prefix
    output: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of full blocks, in order
    committed: int = 0  # leading full blocks already offered to the prefix cache (reset with the blocks)
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached: int = 0  # of those, how many came from the prefix cache on admission
    status: Status = Status.WAITING
    arrival: int = 0  # admission order; later arrivals are preempted first
    preemptions: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def token_slice(self, start: int, n: int) -> list[int]:
        """Tokens [start, start+n), without building the whole token list."""
        p = len(self.prompt)
        if start >= p:
            return self.output[start - p:start - p + n]
        return self.prompt[start:start + n] + self.output[:max(0, start + n - p)]

    def token(self, pos: int) -> int:
        p = len(self.prompt)
        return self.prompt[pos] if pos < p else self.output[pos - p]

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self) - 1 or not self.output

    def computable(self) -> int:
        """Positions whose inputs are known (all of them unless fed from outside)."""
        return len(self) if self.fed is None else min(len(self), self.fed.available())

    def remaining(self) -> int:
        """Tokens that can be computed now (before the next one can be sampled, when they reach
        the end)."""
        return self.computable() - self.num_computed

    def token_key(self, pos: int) -> Any:
        """What position ``pos`` contributes to its block's hash."""
        for span in self.media:
            if span.start <= pos < span.start + span.length:
                return (span.content_hash, span.offset + pos - span.start)
        return self.token(pos)

    def block_keys(self, start: int, n: int) -> bytes:
        """What positions [start, start+n) contribute to their block's hash: the token ids' bytes
        where no media placeholder falls in the range, else every ``token_key`` (tagged apart)."""
        if any(span.start < start + n and start < span.start + span.length for span in self.media):
            return b"m" + repr(tuple(self.token_key(p) for p in range(start, start + n))).encode()
        return token_bytes(self.token_slice(start, n))


def token_bytes(tokens: list[int]) -> bytes:
    """Token ids as the prefix cache hashes them (8 bytes each, after a tag)."""
    return b"t" + array("q", tokens).tobytes()


class Chunk(NamedTuple):
    """Positions [start, start+length) of one sequence, computed in one step."""

    seq: Sequence
    start: int  # first position computed in this step
    length: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so a new token is sampled."""
        return self.start + self.length == len(self.seq)


class StepPlan(NamedTuple):
    """One step's work, as the scheduler chose it; the runner computes it."""

    chunks: list[Chunk]
    preempted: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(c.length for c in self.chunks)
