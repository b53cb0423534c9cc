"""The one wire format: ``[type byte, msgpack body, *out-of-band buffers]``. No pickle.

Port values that are payload structs (``messages.PAYLOAD_TYPES``) are tagged with their type's
code on the way out and converted back to that type (fields checked) on the way in.

Tensors inside a message become msgpack extension values that point at a buffer: either a following zmq frame (sent with ``copy=False``) or a slot of the sender's
shared-memory ring (same host only). Receivers rebuild tensors over the received frame
without copying; shared-memory slots are copied out and released at once. Small ``bytes``
values travel inside the msgpack body; one of at least the shared-memory threshold (an image or
audio file a request carries) travels out of band like a tensor and is ``bytes`` again on
arrival, so a request with a few megabytes of images costs a memory copy, not a socket
transfer. NumPy arrays travel as tensors.

A tensor of at least the shared-memory threshold on the very GPU its receiver (on this host)
runs on goes as its CUDA IPC handle (``cuda_ipc.py``: a typed struct, no host copy), when the
encoder is made with that ``ipc_device``. Any other GPU tensor goes by the host: into a
shared-memory slot straight from the card (one copy), or a frame. A receiver on another card
is not sent handles: opening one would make it a CUDA context on the sender's card, memory
that card's budget does not have.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import torch

from omnistage.connectors.cuda_ipc import CudaHandle, export, open_handle
from omnistage.connectors.messages import (MESSAGE_TYPES, Chunk, Chunks, Data, Message, Part, Probe, payload_code,
                                           payload_type)
from omnistage.connectors.shm import ShmReaders, ShmRing

log = logging.getLogger("omnistage.wire")
_TYPE_ID = {t: i for i, t in enumerate(MESSAGE_TYPES)}
_EXT_TENSOR, _EXT_SHM_TENSOR, _EXT_BYTES, _EXT_SHM_BYTES, _EXT_CUDA_TENSOR = 1, 2, 3, 4, 5

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.complex64, torch.complex128)}


INT_RANGE = (-(1 << 63), 1 << 64)  # msgpack integers: int64 or uint64
MAX_DEPTH = 64  # nesting of lists and dicts a message may carry


def unsendable(value: Any, where: str, depth: int = 0) -> str | None:
    """What in ``value`` the wire cannot carry, as "where: why" (None when it all can): objects of
    other types, integers beyond 64 bits, strings that are not valid Unicode (a lone surrogate),
    nesting deeper than MAX_DEPTH."""
    # Exact types: the encoder refuses subclasses (numpy scalars, str and int subclasses).
    if value is None or type(value) in (bytes, bytearray, bool, float):
        return None
    if type(value) is int:
        return None if INT_RANGE[0] <= value < INT_RANGE[1] else f"{where}: integer out of the 64-bit range"
    if type(value) is str:
        return None if _encodes(value) else f"{where}: not valid Unicode text (it holds a lone surrogate)"
    if isinstance(value, torch.Tensor):
        return None if str(value.dtype).removeprefix("torch.") in _DTYPES else f"{where}: a {value.dtype} tensor"
    if isinstance(value, np.ndarray):
        return None if value.dtype.kind in "biufc" else f"{where}: an array of {value.dtype}"
    if depth >= MAX_DEPTH:
        return f"{where}: nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, msgspec.Struct):  # a payload struct (messages.PAYLOAD_TYPES): its fields must be sendable
        value = msgspec.structs.asdict(value)
    if isinstance(value, dict):
        bad = (unsendable(v, f"{where}.{k}", depth + 1) if type(k) is str and _encodes(k)
               else f"{where}: a key that is not valid text" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        bad = (unsendable(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    else:
        return f"{where}: a {type(value).__name__}"
    return next((b for b in bad if b is not None), None)


def _encodes(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:
        return False


class TensorHeader(msgspec.Struct, array_like=True):
    dtype: str
    shape: list[int]
    index: int  # frame index, or slot number for shared memory
    segment: str = ""
    nbytes: int = 0


class _Blob:
    """A big ``bytes`` value on its way out of band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _lift(value: Any, threshold: int) -> Any:
    """``value`` with every ``bytes`` of at least ``threshold`` wrapped as a _Blob (containers
    rebuilt only where something inside changed)."""
    kind = type(value)
    if kind in (bytes, bytearray):
        return _Blob(bytes(value)) if value and len(value) >= threshold else value
    if kind is dict:
        out = {k: _lift(v, threshold) for k, v in value.items()}
        return out if any(out[k] is not v for k, v in value.items()) else value
    if kind in (list, tuple):
        items = [_lift(v, threshold) for v in value]
        return items if any(a is not b for a, b in zip(items, value)) else value
    return value


class Encoder:
    """Encodes messages; not thread-safe (one thread at a time)."""

    def __init__(self, shm: ShmRing | None = None, shm_threshold: int = 64 * 1024,
                 ipc_device: str | None = None) -> None:
        """``ipc_device``: the receiver's GPU, on this host ("cuda:N"): tensors on it go as IPC handles."""
        self._shm = shm
        self.ipc_device = ipc_device
        self._threshold = shm_threshold
        # The largest bytes value that stays in the message body (never takes a shared-memory slot).
        self.inline_bytes = min(_LIGHT_BYTES, shm_threshold) - 1 if shm is not None else _LIGHT_BYTES - 1
        self._frames: list[Any] = []
        self._body = msgspec.msgpack.Encoder(enc_hook=self._hook)
        self._header = msgspec.msgpack.Encoder()

    def encode(self, msg: Message) -> list[Any]:
        for item in _values(msg):
            item.payload = payload_code(item.value)
        self._frames = []
        body = self._body.encode(self._lifted(msg))
        frames, self._frames = self._frames, []
        return [bytes((_TYPE_ID[type(msg)],)), body, *frames]

    def _lifted(self, msg: Message) -> Message:
        """``msg``, or a copy whose big ``bytes`` go out of band (the sender's object is untouched)."""
        if type(msg) is Chunks:
            items = [self._lifted(c) for c in msg.items]
            return msg if all(a is b for a, b in zip(items, msg.items)) else msgspec.structs.replace(msg, items=items)
        field = _BLOB_FIELDS.get(type(msg))
        if field is None:
            return msg
        value = getattr(msg, field)
        lifted = _lift(value, self._threshold)
        return msg if lifted is value else msgspec.structs.replace(msg, **{field: lifted})

    def _hook(self, obj: Any) -> Any:
        if isinstance(obj, _Blob):
            return self._blob(obj.data)
        if isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
            return self._tensor(torch.from_numpy(np.ascontiguousarray(obj)))
        raise TypeError(f"cannot send a {type(obj).__name__} over the wire")

    def _blob(self, data: bytes) -> msgspec.msgpack.Ext:
        """Big bytes: into a shared-memory slot (one copy), else a zmq frame of their own (none)."""
        if self._shm is not None:
            with warnings.catch_warnings():  # read-only bytes are only the copy's source here
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(data, dtype=torch.uint8)
            slot = self._shm.put(flat)
            if slot is not None:
                head = TensorHeader("uint8", [len(data)], slot, self._shm.name, len(data))
                return msgspec.msgpack.Ext(_EXT_SHM_BYTES, self._header.encode(head))
        self._frames.append(data)
        return msgspec.msgpack.Ext(_EXT_BYTES, self._header.encode(TensorHeader("uint8", [len(data)],
                                                                                 len(self._frames) - 1)))

    def _tensor(self, t: torch.Tensor) -> msgspec.msgpack.Ext:
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise TypeError(f"cannot send a tensor of dtype {t.dtype}")
        t = t.detach()
        nbytes = t.numel() * t.element_size()
        if t.device.type == "cuda" and nbytes >= self._threshold and str(t.device) == self.ipc_device:
            return msgspec.msgpack.Ext(_EXT_CUDA_TENSOR, self._header.encode(export(t)))
        flat = t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        if self._shm is not None and nbytes >= self._threshold:
            slot = self._shm.put(flat)  # (from a GPU: one copy, straight into the slot)
            if slot is not None:  # ring full or tensor too big: fall through to a zmq frame
                head = TensorHeader(dtype, list(t.shape), slot, self._shm.name, nbytes)
                return msgspec.msgpack.Ext(_EXT_SHM_TENSOR, self._header.encode(head))
        flat = flat.cpu()
        self._frames.append(memoryview(flat.numpy()))
        head = TensorHeader(dtype, list(t.shape), len(self._frames) - 1)
        return msgspec.msgpack.Ext(_EXT_TENSOR, self._header.encode(head))


class Decoder:
    """Decodes messages; not thread-safe (one per receiving thread)."""

    def __init__(self, shm_readers: ShmReaders | None = None) -> None:
        self._readers = shm_readers or ShmReaders()
        self._frames: Sequence[Any] = ()
        self._failed = False  # a value of the message being decoded could not be brought in
        self._bodies = [msgspec.msgpack.Decoder(t, ext_hook=self._ext) for t in MESSAGE_TYPES]
        self._header = msgspec.msgpack.Decoder(TensorHeader)
        self._cuda_header = msgspec.msgpack.Decoder(CudaHandle)

    def decode(self, frames: Sequence[Any]) -> Message:
        """The message; ``Unreadable`` when a value it carries could not be brought in."""
        type_id = bytes(frames[0])[0]
        if type_id >= len(self._bodies):
            raise ValueError(f"unknown message type {type_id}")
        self._frames, self._failed = frames, False
        try:
            msg = self._bodies[type_id].decode(frames[1])
        finally:
            self._frames = ()
        lost = Unreadable.of(msg) if self._failed else None
        for item in _values(msg if lost is None else lost.rest):
            if item.payload:
                item.value = _typed(item)
        if lost is not None:
            raise lost
        return msg

    def _ext(self, code: int, data: memoryview) -> Any:
        """A tensor or bytes value. One that cannot be brought in (its shared-memory segment gone,
        a CUDA handle the card cannot open or has no memory for) becomes a ``_Missing`` marker,
        so that only the requests whose values it held fail, not the reading thread; any other
        error (a malformed header: a sender's bug) still raises."""
        try:
            return self._value(code, data)
        except _CannotBring as exc:
            self._failed = True
            return _Missing(str(exc))

    def _value(self, code: int, data: memoryview) -> Any:
        if code == _EXT_CUDA_TENSOR:
            handle = self._cuda_header.decode(data)
            try:
                return open_handle(handle, _DTYPES[handle.dtype])
            except RuntimeError as exc:  # (torch.OutOfMemoryError, a CUDA error opening the handle)
                raise _CannotBring(exc) from exc
        head = self._header.decode(data)
        if code == _EXT_BYTES:
            return bytes(_buffer(self._frames[2 + head.index]))
        if code == _EXT_SHM_BYTES:  # copied out: the slot goes back to the sender as the view dies
            return self._take(head).numpy().tobytes()
        dtype = _DTYPES[head.dtype]
        if code == _EXT_SHM_TENSOR:
            flat = self._take(head)
        elif code == _EXT_TENSOR:
            raw = _buffer(self._frames[2 + head.index])
            if len(raw) == 0:
                return torch.empty(head.shape, dtype=dtype)
            flat = torch.frombuffer(raw, dtype=torch.uint8)
        else:
            raise ValueError(f"unknown extension type {code}")
        return flat.view(dtype).reshape(head.shape)

    def _take(self, head: TensorHeader) -> torch.Tensor:
        try:
            return self._readers.take(head.segment, head.index, head.nbytes)
        except OSError as exc:  # (the sender's segment is gone)
            raise _CannotBring(exc) from exc

    def close(self) -> None:
        self._readers.close()


def is_light(msg: Message, max_bytes: int = 16 * 1024 - 1, depth: int = 4) -> bool:
    """Whether ``msg`` holds no tensor, array or bytes value longer than ``max_bytes`` (searched
    ``depth`` containers deep; anything deeper counts as heavy): cheap to encode on any thread,
    and, with ``max_bytes`` at most an encoder's ``inline_bytes``, encoded without shared memory."""
    if type(msg) is Chunks:
        return all(_light(c.value, max_bytes, depth) for c in msg.items)
    field = _BLOB_FIELDS.get(type(msg))
    return field is None or _light(getattr(msg, field), max_bytes, depth)


def _light(value: Any, max_bytes: int, depth: int) -> bool:
    kind = type(value)
    if kind in (str, int, float, bool) or value is None:
        return True
    if kind in (bytes, bytearray):
        return len(value) <= max_bytes
    if depth == 0 or isinstance(value, (torch.Tensor, np.ndarray)):
        return False
    if kind is dict:
        return all(_light(v, max_bytes, depth - 1) for v in value.values())
    if kind in (list, tuple):
        return all(_light(v, max_bytes, depth - 1) for v in value)
    return False  # a struct or object of some other kind: it may hold tensors


_LIGHT_BYTES = 16 * 1024
# The field of each message type that carries request values (where big bytes may be).
_BLOB_FIELDS = {Data: "value", Part: "value", Chunk: "value", Probe: "inputs"}


class _CannotBring(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class _Missing:
    """Where a value that could not be brought in was."""

    error: str


def _missing_in(value: Any) -> _Missing | None:
    if isinstance(value, _Missing):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):  # (as deep as the wire nests: MAX_DEPTH)
        return next((found for v in value if (found := _missing_in(v)) is not None), None)
    return None


class Unreadable(Exception):
    """A message some of whose values could not be brought in: ``failed`` maps each request they
    belonged to to why (empty for a message of no request); ``rest`` is what of the message is
    still whole to deliver (the other requests' chunks of a ``Chunks``), or None."""

    def __init__(self, failed: dict[str, str], rest: Message | None) -> None:
        super().__init__("; ".join(f"{rid}: {why}" for rid, why in failed.items()))
        self.failed, self.rest = failed, rest

    @classmethod
    def of(cls, msg: Message) -> Unreadable:
        if not isinstance(msg, Chunks):
            field = _BLOB_FIELDS.get(type(msg))
            found = _missing_in(getattr(msg, field)) if field else None
            rid = getattr(msg, "rid", "")
            return cls({rid: found.error if found else "a value could not be read"} if rid else {}, None)
        failed = {c.rid: found.error for c in msg.items if (found := _missing_in(c.value)) is not None}
        whole = [c for c in msg.items if c.rid not in failed]
        return cls(failed, msgspec.structs.replace(msg, items=whole) if whole else None)


def _values(msg: Message) -> list[Data | Part | Chunk]:
    """The messages in ``msg`` that carry a port value."""
    if isinstance(msg, (Data, Part, Chunk)):
        return [msg]
    return msg.items if isinstance(msg, Chunks) else []


def _typed(item: Data | Part | Chunk) -> Any:
    """The item's value as its payload type. One that does not fit (a sender's bug) stays plain
    data, logged: the stage that takes it fails that request, and this thread lives on."""
    try:
        return msgspec.convert(item.value, payload_type(item.payload), dec_hook=_tensor_field)
    except (msgspec.ValidationError, IndexError) as exc:
        log.error("request %s: a %s value does not fit payload type %d: %s", item.rid, type(item).__name__,
                  item.payload, exc)
        return item.value


def _tensor_field(tp: Any, obj: Any) -> Any:
    """A payload's tensor field holds the tensor the wire rebuilt; anything else there is refused."""
    if tp is torch.Tensor and isinstance(obj, torch.Tensor):
        return obj
    raise TypeError(f"expected {getattr(tp, '__name__', tp)}, got {type(obj).__name__}")


def _buffer(frame: Any) -> Any:
    """A zmq Frame's writable buffer (received frames are ours alone), or the object itself."""
    return frame.buffer if hasattr(frame, "buffer") else frame
