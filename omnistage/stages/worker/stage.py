"""The interface every stage kind implements. Engines are libraries: no sockets, no threads."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class StageRequest:
    """``inputs`` of a streamed port hold the deltas so far (a list); the ports in ``open`` get
    more through the engine's ``feed``. ``outputs``: the output ports something takes for this
    request (None: unknown, all of them)."""

    rid: str
    inputs: dict[str, Any]
    params: Mapping[str, Any]
    open: frozenset[str] = frozenset()
    outputs: frozenset[str] | None = None


@dataclass
class StageOutput:
    """Values for output ports. Streaming ports carry deltas; others their whole value once.

    ``finished`` ends the request in this stage; ``error`` fails it (with ``status``).
    """

    rid: str
    ports: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    status: int = 500


class StageEngine(Protocol):
    def add(self, request: StageRequest) -> None:
        """Queue a request. Raises RequestRejected for input this engine cannot take."""

    def step(self) -> list[StageOutput]:
        """Advance every running request by one unit of work."""

    def abort(self, rid: str) -> None:
        """Forget a request; no output for it follows."""

    # Kinds with streamed inputs also have
    #   feed(rid, port, values: list, last: bool) -> None
    # called with each further delta of an open port (``last`` closes it; its values are empty).

    def has_work(self) -> bool: ...


def concat(prev: Any, delta: Any) -> Any:
    """Join streamed deltas of one port: strings and lists append, tensors cat on dim 0."""
    if prev is None:
        return delta
    if isinstance(prev, torch.Tensor):
        return torch.cat([prev, delta])
    if isinstance(prev, (str, list, bytes)):
        return prev + delta
    raise TypeError(f"cannot stream values of type {type(prev).__name__}")
