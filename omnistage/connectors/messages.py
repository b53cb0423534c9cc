"""Every message that crosses a process boundary, and every typed payload a port carries from
one stage to another. Encoding lives in ``wire.py``.

Values on ports (``Data.value``, ``Part.value``, ``Chunk.value``) are plain data (str, numbers,
lists, dicts, bytes, tensors: user ports, text, images) or one of the payload structs below (or
a list of one of them). ``payload`` names the struct type (0: plain data); the wire sets it when
it encodes and converts the value back to that type when it decodes, so a receiver gets the same
typed value its sender made. Tensors anywhere travel out of band (zmq frames or shared memory).
"""
from __future__ import annotations

from typing import Any

import msgspec
import torch


# --- payloads: what typed ports carry ------------------------------------------------------
class MediaEmbedding(msgspec.Struct, array_like=True):
    """One media item's embeddings from an ``encode`` stage (port type ``media_embeds``: a list of
    these, in the request's item order); an AR stage matches them to its placeholders by hash."""

    hash: str  # content hash of the item (see encoders.media)
    embeds: torch.Tensor  # [tokens, hidden]
    grid: list[int] = []  # (t, h, w) patch grid of images and video; empty for audio


class WireSpan(msgspec.Struct, array_like=True):
    """A media span of a prefilled prompt (ar_engine.sequence.MediaSpan) as it crosses to decode.

    ``embeds`` may be absent (the prefix cache covered the item); then ``pixels`` travel, so that
    the decode stage can encode the item itself should it ever recompute those positions. A span
    that is one part of a split item (a video interleaved with its sound) covers rows
    [offset, offset + length) of the whole item's ``tokens``."""

    start: int
    length: int
    hash: str
    embeds: torch.Tensor | None
    grid: list[int] | None
    pixels: torch.Tensor | None
    offset: int
    tokens: int


class KvHandoff(msgspec.Struct, array_like=True):
    """A ``prefill`` stage's result for its ``decode`` stage (port type ``kv``)."""

    prompt: list[int]
    first: int  # the first generated token
    kv: torch.Tensor | None  # [layers, 2, prompt_len, kv_heads, head_dim]; None when the request ended at ``first``
    finish_reason: str | None
    text: str  # ``first`` detokenized
    rng: torch.Tensor | None  # the request's sampling generator state, so seeded sampling continues exactly
    media: list[WireSpan]
    mrope_positions: torch.Tensor | None  # [3, prompt_len] for M-RoPE models
    mrope_delta: int


class ThinkerStates(msgspec.Struct, array_like=True):
    """What a talker conditions on, streamed per generated token (port type ``thinker_states``):
    the thinker's last-layer hidden states and input embeddings of the positions it computed;
    the first delta also carries the prompt."""

    tokens: list[int]
    hidden: torch.Tensor | None  # [positions, hidden]
    embeds: torch.Tensor | None  # [positions, hidden]
    prompt: list[int] | None = None
    mrope: torch.Tensor | None = None  # [3, prompt_len]
    mrope_delta: int = 0


class PromptEmbeds(msgspec.Struct, array_like=True):
    """A ``text_encode`` stage's result for its ``diffusion`` stage (port type ``prompt_embeds``):
    the prompt's embeddings by name (``embeds``, ``pooled``, ...), and the negative prompt's when
    the request uses classifier-free guidance."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None


class Progress(msgspec.Struct, array_like=True):
    """Denoising progress of one request (the diffusion kind's streamed ``progress`` port)."""

    step: int
    steps: int


# The position in this tuple (plus one) is a value's payload code: append only, never reorder.
PAYLOAD_TYPES: tuple[type, ...] = (MediaEmbedding, KvHandoff, ThinkerStates, PromptEmbeds, Progress)
_PAYLOAD_CODE = {t: i + 1 for i, t in enumerate(PAYLOAD_TYPES)}
_LIST = 1 << 7  # a list of the payload type


def payload_code(value: Any) -> int:
    """0 for plain data (a list mixing types included); else the code of the payload struct
    ``value`` is, or a list of."""
    code = _PAYLOAD_CODE.get(type(value))
    if code is not None:
        return code
    if isinstance(value, list) and value and (code := _PAYLOAD_CODE.get(type(value[0]))) is not None:
        return code | _LIST if all(type(v) is type(value[0]) for v in value) else 0
    return 0


def payload_type(code: int) -> Any:
    """The type a payload code stands for."""
    item = PAYLOAD_TYPES[(code & ~_LIST) - 1]
    return list[item] if code & _LIST else item


class Dest(msgspec.Struct, frozen=True, array_like=True):
    """Where a stage sends one of its output ports for one request."""

    address: str
    port: str  # destination input port, or the response modality when ``to_response``
    to_response: bool = False
    stream: bool = False  # send each delta as a Part while the request runs (a streamed input)
    node: str = ""  # the receiver's node: tensors go through shared memory only within one node
    device: str = ""  # the receiver's GPU ("cuda:N"; "" none): a tensor on that card of its node goes as a CUDA IPC handle


class Ready(msgspec.Struct, array_like=True):
    stage: str
    replica: int
    pid: int
    address: str  # where this replica's inbox listens
    node: str = ""  # the node it runs on ("" on this host's launcher; a Ray node id on Ray)
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
    payload: int = 0  # set by the wire (see payload_code)


class Part(msgspec.Struct, array_like=True):
    """One delta of a streamed input port, in order; ``last`` closes the stream (its value is
    then None)."""

    rid: str
    port: str
    value: Any
    last: bool = False
    payload: int = 0  # set by the wire (see payload_code)


class Chunk(msgspec.Struct, array_like=True):
    """A piece of a response modality (a text delta, an audio chunk), in order."""

    rid: str
    modality: str
    value: Any
    payload: int = 0  # set by the wire (see payload_code)


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


class ImageRef(msgspec.Struct, array_like=True):
    """An image file named by what a prefix cache keys it on: the digest of its bytes and its
    size (which sets its token count). A probe carries these instead of the files."""

    digest: bytes
    width: int
    height: int


class Probe(msgspec.Struct, array_like=True):
    """Asks an AR stage to prepare a request early and report which of its media items its
    prefix cache already covers (so they need not be encoded). The inputs stay with the stage.

    ``images``: the request's images by reference (they replace ``inputs["images"]``); the stage
    keeps what it reports covered cached until the request ends, so it never needs their files."""

    rid: str
    inputs: dict[str, Any]
    params: dict[str, Any]
    sink: str
    images: list[ImageRef] | None = None


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
