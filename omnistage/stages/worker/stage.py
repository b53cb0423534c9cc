"""The contract every stage kind implements, as the worker loop calls it.

A stage adapts one engine (a library: no sockets, no threads) to requests and ports. The worker
calls it from one thread only. Required: ``add``, ``step``, ``abort``, ``has_work``. Optional
capabilities are declared by subclassing, never discovered with ``hasattr``:

- ``info`` / ``stats`` (defaults: none): model facts sent once in Ready for the kind's
  submit-time check, and numbers reported every half second (queue lengths, cache hit rates);
- ``ProbingStage``: an AR stage whose prefix cache can be asked, before the request's media are
  encoded, which images it already holds (its kind declares ``probes=True``);
- ``StreamingInputStage``: a stage with a streamed input port takes its further deltas in
  ``feed`` (the graph compiler marks such ports ``streaming``).

Errors: ``add``/``feed``/``prepare`` raise ``RequestRejected`` for input the client got wrong
(a 4xx naming the field); any other exception there fails that one request with a 500 and is
logged as an internal error. An exception from ``step`` breaks every request in the batch: the
replica dies loudly and its requests fail.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StageRequest:
    """``inputs`` of a streamed port hold the deltas so far (a list); the ports in ``open`` get
    more through ``feed``. ``outputs``: the output ports something takes for this request (None:
    unknown, all of them)."""

    rid: str
    inputs: dict[str, Any]
    params: Mapping[str, Any]
    open: frozenset[str] = frozenset()
    outputs: frozenset[str] | None = None


@dataclass
class StageOutput:
    """Values for output ports. Streaming ports carry deltas; others their whole value once.

    ``finished`` ends the request in this stage; ``error`` fails it (with ``status``, and the
    request ``param`` at fault for a 4xx).
    """

    rid: str
    ports: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    status: int = 500
    param: str | None = None


class Stage(abc.ABC):
    @abc.abstractmethod
    def add(self, request: StageRequest) -> None:
        """Queue a request. Raises RequestRejected for input this stage cannot take."""

    @abc.abstractmethod
    def step(self) -> list[StageOutput]:
        """Advance every running request by one unit of work."""

    @abc.abstractmethod
    def abort(self, rid: str) -> None:
        """Forget a request; no output for it follows."""

    @abc.abstractmethod
    def has_work(self) -> bool:
        """Whether ``step`` would do something now."""

    def info(self) -> dict[str, Any]:
        """Facts about the loaded model that the kind's submit-time check needs (sent in Ready)."""
        return {}

    def stats(self) -> dict[str, float]:
        """This stage's recent numbers (``waiting``, ``running``, hit rates), for /metrics and the
        elastic controller."""
        return {}


class ProbingStage(Stage):
    @abc.abstractmethod
    def prepare(self, rid: str, inputs: dict[str, Any], params: Mapping[str, Any]) -> Any:
        """Decode, preprocess and tokenize a request ahead of its Admit. Touches no stage state:
        the worker runs it off its main loop."""

    @abc.abstractmethod
    def probe_prepared(self, prepared: Any) -> list[int]:
        """Keep a prepared request for its Admit; the indices (among its images) of the images
        whose KV the prefix cache already holds."""


class StreamingInputStage(Stage):
    @abc.abstractmethod
    def feed(self, rid: str, port: str, values: list[Any], last: bool) -> None:
        """Further deltas of a started request's streamed input ``port``; ``last`` closes it (its
        values are then empty)."""


def concat(prev: Any, delta: Any) -> Any:
    """Join streamed deltas of one port: strings and lists append, tensors cat on dim 0."""
    if prev is None:
        return delta
    if isinstance(prev, torch.Tensor):
        return torch.cat([prev, delta])
    if isinstance(prev, (str, list, bytes)):
        return prev + delta
    raise TypeError(f"cannot stream values of type {type(prev).__name__}")
