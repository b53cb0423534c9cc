"""Outgoing messages: one socket, encoder and sending thread per destination.

A small message to a destination with nothing queued is encoded and sent at once by the thread
that puts it (a non-blocking send): no hand-off to another thread, whose wake-up and wait for
the interpreter lock cost from a tenth of a millisecond to several while the putting thread runs
a step. Everything else (a message with tensors or big bytes, whose copy is better done beside
the caller than by it; one behind others; one the peer cannot take now) goes through the
destination's thread, in order. A socket is used by one thread at a time: whoever holds its
destination's ``busy`` flag.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from omnistage.connectors.messages import Message
from omnistage.connectors.wire import Encoder, is_light

log = logging.getLogger("omnistage.transport")

_RETRY_MS = 200
_DROP = object()
# What encoding a message can raise: a value msgspec refuses (type, range, depth, text), or the
# shared-memory ring failing to take a tensor.
_ENCODE_ERRORS = (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError, OSError)


@dataclass
class _Encoded:
    """A message encoded by its putter that its destination's thread sends (its frames may hold
    shared-memory slots: it is never encoded twice)."""

    msg: Message
    frames: list[Any]


@dataclass
class _Failed:
    """A message its putter could not encode: its destination's thread reports it."""

    msg: Message
    error: BaseException


@dataclass
class _Outbox:
    """One destination: what waits for its thread, its socket once the thread opened it, and
    whether a thread is sending on that socket now."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    pending: deque[Any] = field(default_factory=deque)
    busy: bool = False
    dead: bool = False
    sock: Any = None
    encoder: Encoder | None = None


class Mailer:
    """``put`` never blocks: a destination whose high-water mark is reached (a slow or stuck
    stage) holds up only its own queue, not messages to everyone else. Messages to one
    destination keep their order.

    A message that cannot be encoded is handed to ``on_unsent`` (which fails its request) by the
    destination's thread, which goes on; a thread whose socket fails hands over everything
    queued behind it and ends, and the next ``put`` to that destination starts a fresh one.
    """

    def __init__(self, ctx: zmq.Context, make_encoder: Callable[[str], Encoder], hwm: int = 1000,
                 on_unsent: Callable[[Message, BaseException], None] | None = None) -> None:
        self.on_unsent = on_unsent or _log_unsent
        self._ctx = ctx
        self._make_encoder = make_encoder
        self._hwm = hwm
        self._boxes: dict[str, _Outbox] = {}
        self._threads: list[threading.Thread] = []
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def put(self, address: str, msg: Message) -> None:
        while True:
            box = self._box(address)
            if box is None:
                return  # a dropped destination
            with box.cond:
                if box.dead:
                    continue  # its thread ended a moment ago: a fresh one takes the message
                if (box.busy or box.pending or box.sock is None
                        or not is_light(msg, box.encoder.inline_bytes)):  # type: ignore[union-attr]
                    box.pending.append(msg)
                    box.cond.notify_all()
                    return
                box.busy = True
            break
        left: Any = msg
        try:
            left = self._send_now(box, msg)
        finally:  # whatever happens, the socket is free again and what is unsent goes to the thread
            with box.cond:
                box.busy = False
                if left is not None:
                    box.pending.appendleft(left)
                box.cond.notify_all()

    def _box(self, address: str) -> _Outbox | None:
        with self._lock:
            if address in self._dropped:
                return None
            box = self._boxes.get(address)
            if box is None:
                box = self._boxes[address] = _Outbox()
                thread = threading.Thread(target=self._run, args=(address, box), daemon=True,
                                          name=f"mail-{address.rsplit('/', 1)[-1]}")
                thread.start()
                self._threads.append(thread)
            return box

    @staticmethod
    def _send_now(box: _Outbox, msg: Message) -> Any:
        """Send ``msg`` from the putting thread (its caller holds ``busy``); what is left for the
        destination's thread: None once sent, else the encoding error (the thread reports it) or
        the frames (the peer cannot take them now; a light message's frames hold no shared memory)."""
        assert box.encoder is not None
        try:
            frames = box.encoder.encode(msg)
        except _ENCODE_ERRORS as exc:
            return _Failed(msg, exc)
        try:
            box.sock.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
            return None
        except zmq.ZMQError:  # full (EAGAIN) or failing: the thread waits, retries or gives up as usual
            return _Encoded(msg, frames)

    def drop(self, address: str) -> None:
        """A destination that is gone: discard what is queued for it and all that follows."""
        with self._lock:
            self._dropped.add(address)
            box = self._boxes.pop(address, None)
        if box is not None:
            self._enqueue(box, _DROP)

    def revive(self, address: str) -> None:
        """A new peer at a dropped address (a restarted replica may reuse a dead one's TCP port)."""
        with self._lock:
            self._dropped.discard(address)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout`` per destination), then stop."""
        with self._lock:
            boxes = list(self._boxes.values())
            self._boxes.clear()
        for box in boxes:
            self._enqueue(box, None)
        for thread in self._threads:
            thread.join(timeout)
        self._closing.set()  # any thread still blocked on a full peer gives up now
        for thread in self._threads:
            thread.join(2 * _RETRY_MS / 1000)

    @staticmethod
    def _enqueue(box: _Outbox, item: Any) -> None:
        with box.cond:
            box.pending.append(item)
            box.cond.notify()

    # --- a destination's thread ---------------------------------------------------------------
    def _run(self, address: str, box: _Outbox) -> None:
        sock, error = None, None
        try:
            encoder = self._make_encoder(address)  # (per destination: shared memory reaches only its own node)
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self._hwm)
            sock.setsockopt(zmq.SNDTIMEO, _RETRY_MS)
            sock.connect(address)
            with box.cond:
                box.sock, box.encoder = sock, encoder
            while (item := self._next(box)) is not None and item is not _DROP:
                try:
                    self._deliver(address, box, sock, item)
                finally:
                    with box.cond:
                        box.busy = False
                        box.cond.notify_all()
        except (zmq.ContextTerminated, _Stop):
            pass  # shutting down, or the peer is gone: nothing to report
        except Exception as exc:  # noqa: BLE001 - this destination's thread ends: its queue fails, a put starts anew
            error = exc
        finally:
            left = self._retire(address, box)
            if sock is not None:
                sock.close(linger=0 if address in self._dropped else 2000)
        if error is not None:
            log.error("sending to %s failed; its queued messages fail", address, exc_info=error)
            for item in left:
                if item is not None and item is not _DROP:
                    self._unsent(item.msg if isinstance(item, (_Encoded, _Failed)) else item, error)

    def _retire(self, address: str, box: _Outbox) -> list[Any]:
        """This destination's thread ends: once no putter sends on its socket, the box is dead (a
        later put starts a fresh one); what was still queued is returned."""
        with self._lock:
            if self._boxes.get(address) is box:
                del self._boxes[address]
        with box.cond:
            while box.busy:
                box.cond.wait()
            box.dead, box.sock = True, None
            left = list(box.pending)
            box.pending.clear()
        return left

    @staticmethod
    def _next(box: _Outbox) -> Any:
        """The next queued item, once no putter is sending; the caller then holds ``busy``."""
        with box.cond:
            while box.busy or not box.pending:
                box.cond.wait()
            item = box.pending.popleft()
            box.busy = item is not None and item is not _DROP
            return item

    def _deliver(self, address: str, box: _Outbox, sock: Any, item: Any) -> None:
        if isinstance(item, _Failed):
            self._unsent(item.msg, item.error)
            return
        if isinstance(item, _Encoded):
            frames = item.frames
        else:
            try:
                frames = box.encoder.encode(item)  # type: ignore[union-attr]
            except _ENCODE_ERRORS as exc:  # that message's request fails alone; the thread goes on
                self._unsent(item, exc)
                return
        while not self._send(sock, frames):
            if self._closing.is_set() or address in self._dropped:
                raise _Stop

    def _unsent(self, msg: Message, exc: BaseException) -> None:
        try:
            self.on_unsent(msg, exc)
        except Exception:  # noqa: BLE001 - reporting one lost message must not lose the rest
            log.exception("could not report an unsent %s", type(msg).__name__)

    @staticmethod
    def _send(sock: Any, frames: list[Any]) -> bool:
        """False when the peer's queue stayed full for a retry period (backpressure)."""
        try:
            sock.send_multipart(frames, copy=False)
            return True
        except zmq.Again:
            return False


class _Stop(Exception):
    """A destination's thread stops waiting on a peer that is gone, or on shutdown."""


def _log_unsent(msg: Message, exc: BaseException) -> None:
    log.error("could not send a %s (request %s): %s: %s", type(msg).__name__, getattr(msg, "rid", "-"),
              type(exc).__name__, exc)

