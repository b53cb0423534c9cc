"""What a caller holds for one request: a stream of events, usable from threads or asyncio."""
from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from omnistage.errors import OmnistageError, RequestFailed
from omnistage.stages.worker.stage import concat


@dataclass(frozen=True)
class ChunkEvent:
    modality: str
    value: Any


@dataclass(frozen=True)
class DoneEvent:
    meta: dict[str, dict[str, Any]]  # stage -> what it reported (usage, finish reason)


@dataclass(frozen=True)
class ErrorEvent:
    error: OmnistageError


Event = ChunkEvent | DoneEvent | ErrorEvent


@dataclass
class Result:
    rid: str
    outputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def text(self) -> str | None:
        return self.outputs.get("text")

    @property
    def usage(self) -> dict[str, int]:
        prompt = sum(m.get("prompt_tokens", 0) for m in self.meta.values())
        completion = sum(m.get("completion_tokens", 0) for m in self.meta.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @property
    def finish_reason(self) -> str | None:
        reasons = [m["finish_reason"] for m in self.meta.values() if "finish_reason" in m]
        return reasons[-1] if reasons else None


class RequestHandle:
    """Events arrive from the orchestrator's receiver thread, in order, ending with Done or Error.

    With ``loop`` set, events are delivered into that event loop for ``async for``.
    """

    def __init__(self, rid: str, loop: asyncio.AbstractEventLoop | None = None,
                 params: dict[str, Any] | None = None) -> None:
        self.rid = rid
        self.params = params or {}  # as admitted: with the values submit-time checks resolved
        self._loop = loop
        self._sync: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._async: asyncio.Queue[Event] | None = asyncio.Queue() if loop is not None else None
        self.closed = False
        self.created_at = time.perf_counter()
        self.first_at: float | None = None  # first output chunk (time to first token; progress reports are not output)
        self.first_audio_at: float | None = None  # first audio packet
        self.audio_samples = 0
        self.finished_at: float | None = None
        self.token_times: list[float] = []  # arrival of each text chunk (inter-token latency)

    def push(self, event: Event) -> None:
        if self.closed:
            return
        now = time.perf_counter()
        if self.first_at is None and isinstance(event, ChunkEvent) and event.modality != "progress":
            self.first_at = now
        if isinstance(event, ChunkEvent) and event.modality == "text":
            self.token_times.append(now)
        if isinstance(event, ChunkEvent) and event.modality == "audio":
            self.first_audio_at = self.first_audio_at or now
            self.audio_samples += event.value.numel() if isinstance(event.value, torch.Tensor) else 0
        self.closed = isinstance(event, (DoneEvent, ErrorEvent))
        if self.closed:
            self.finished_at = now
        if self._async is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        else:
            self._sync.put(event)

    def token_gaps(self) -> list[float]:
        """Seconds between consecutive text chunks."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        while True:
            try:
                event = self._sync.get(timeout=timeout)
            except queue.Empty:
                raise RequestFailed(f"request {self.rid} produced nothing for {timeout} s") from None
            yield event
            if not isinstance(event, ChunkEvent):
                return

    async def aevents(self) -> AsyncIterator[Event]:
        assert self._async is not None, "handle was created without an event loop"
        while True:
            event = await self._async.get()
            yield event
            if not isinstance(event, ChunkEvent):
                return

    def result(self, timeout: float | None = None) -> Result:
        result = Result(self.rid)
        for event in self.events(timeout):
            _fold(result, event)
        return result

    async def aresult(self) -> Result:
        result = Result(self.rid)
        async for event in self.aevents():
            _fold(result, event)
        return result


def _fold(result: Result, event: Event) -> None:
    if isinstance(event, ChunkEvent):
        result.outputs[event.modality] = concat(result.outputs.get(event.modality), event.value)
    elif isinstance(event, DoneEvent):
        result.meta = event.meta
    else:
        raise event.error
