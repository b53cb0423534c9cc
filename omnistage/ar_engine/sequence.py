"""One request inside the AR engine: its tokens, KV blocks and progress."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from omnistage.ar_engine.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    HELD = "held"  # out of the batch, blocks kept (a prefill waiting to hand its KV over)
    FINISHED = "finished"


@dataclass
class MediaSpan:
    """Placeholder tokens [start, start+length) that stand for one media item.

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


@dataclass
class Sequence:
    rid: str
    prompt: list[int]
    sampling: SamplingParams
    media: tuple[MediaSpan, ...] = ()
    # 3-row M-RoPE positions of the prompt ([3, len]) and the text offset after it (Qwen2-VL).
    mrope_positions: Any = None
    mrope_delta: int = 0
    output: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)  # chain hashes of full blocks, in order
    num_computed: int = 0  # tokens whose K/V are in the cache
    num_cached: int = 0  # of those, how many came from the prefix cache on admission
    status: Status = Status.WAITING
    arrival: int = 0  # admission order; later arrivals are preempted first
    preemptions: int = 0

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    def __len__(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self) - 1 or not self.output

    def remaining(self) -> int:
        """Tokens still to be computed before the next one can be sampled."""
        return len(self) - self.num_computed

    def token_key(self, pos: int) -> Any:
        """What position ``pos`` contributes to its block's hash."""
        for span in self.media:
            if span.start <= pos < span.start + span.length:
                return (span.content_hash, pos - span.start)
        return self.tokens[pos]
