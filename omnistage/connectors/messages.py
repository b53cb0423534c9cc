"""Every message that crosses a process boundary. Encoding lives in ``wire.py``.

Values on ports (``Data.value``, ``Chunk.value``) may be any msgpack-able structure holding
``torch.Tensor`` and ``bytes`` leaves; those travel out of band (zmq frames or shared memory).
"""
from __future__ import annotations

from typing import Any

import msgspec


class Dest(msgspec.Struct, frozen=True, array_like=True):
    """Where a stage sends one of its output ports for one request."""

    address: str
    port: str  # destination input port, or the response modality when ``to_response``
    to_response: bool = False
    stream: bool = False  # send each delta as a Part while the request runs (a streamed input)


class Ready(msgspec.Struct, array_like=True):
    stage: str
    replica: int
    pid: int
    address: str  # where this replica's inbox listens
    # Static facts about the loaded model a kind's submit-time check needs (KindSpec.check_params).
    info: dict[str, Any] = {}


class StartFailed(msgspec.Struct, array_like=True):
    stage: str
    replica: int
    error: str


class Admit(msgspec.Struct, array_like=True):
    """Tells a stage replica that a request will visit it: what to wait for, where outputs go."""

    rid: str
    expect: list[str]
    routes: dict[str, list[Dest]]
    params: dict[str, Any]
    sink: str  # address of the orchestrator's inbox
    # Ports fed by several senders (an input split across replicas): how many parts to gather.
    # Their values are lists; the parts are concatenated.
    parts: dict[str, int] = {}
    # Streamed input ports: their values arrive as Parts, and the request starts with the first.
    streams: list[str] = []


class Data(msgspec.Struct, array_like=True):
    """A complete value for one input port of one request."""

    rid: str
    port: str
    value: Any


class Part(msgspec.Struct, array_like=True):
    """One delta of a streamed input port, in order; ``last`` closes the stream (its value is
    then None)."""

    rid: str
    port: str
    value: Any
    last: bool = False


class Chunk(msgspec.Struct, array_like=True):
    """A piece of a response modality (a text delta, an audio chunk), in order."""

    rid: str
    modality: str
    value: Any


class Chunks(msgspec.Struct, array_like=True):
    """The chunks one stage step produced for one sink, sent together (one message per step)."""

    items: list[Chunk]


class Done(msgspec.Struct, array_like=True):
    """A stage finished its part of a request; ``meta`` carries usage and finish reasons."""

    rid: str
    stage: str
    replica: int
    meta: dict[str, Any]


class Failed(msgspec.Struct, array_like=True):
    rid: str
    stage: str
    replica: int
    error: str
    status: int = 500
    param: str | None = None  # the request parameter at fault, for a 4xx


class Abort(msgspec.Struct, array_like=True):
    rid: str


class Shutdown(msgspec.Struct, array_like=True):
    pass


class Stats(msgspec.Struct, array_like=True):
    """A replica's recent numbers (queue lengths, batch, step time, cache hit rates)."""

    stage: str
    replica: int
    values: dict[str, float]


class Probe(msgspec.Struct, array_like=True):
    """Asks an AR stage to prepare a request early and report which of its media items its
    prefix cache already covers (so they need not be encoded). The inputs stay with the stage."""

    rid: str
    inputs: dict[str, Any]
    params: dict[str, Any]
    sink: str


class ProbeResult(msgspec.Struct, array_like=True):
    rid: str
    stage: str
    replica: int
    covered: list[int]
    error: str = ""
    status: int = 0


# The position in this tuple is the one-byte type frame: append only, never reorder.
MESSAGE_TYPES: tuple[type, ...] = (Ready, StartFailed, Admit, Data, Chunk, Done, Failed, Abort, Shutdown, Chunks,
                                   Probe, ProbeResult, Stats, Part)
Message = (Ready | StartFailed | Admit | Data | Chunk | Done | Failed | Abort | Shutdown | Chunks | Probe
           | ProbeResult | Stats | Part)
