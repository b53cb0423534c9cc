"""ZeroMQ transport: one PULL inbox per process, PUSH outboxes connected on demand.

Each socket is touched by exactly one thread: the inbox by the reading thread, each outgoing
socket by its destination's sending thread (the Mailer's). Sends block when the peer's
high-water mark is reached, which is how backpressure travels upstream.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from omnistage.connectors.messages import Message
from omnistage.connectors.shm import ShmRing
from omnistage.connectors.wire import Decoder, Encoder

log = logging.getLogger("omnistage.transport")


def bind_address(protocol: str, host: str, run_dir: str, name: str) -> str:
    if protocol == "ipc":
        return f"ipc://{os.path.join(run_dir, name)}.sock"
    return f"tcp://{host}:*"


class Inbox:
    def __init__(self, ctx: zmq.Context, address: str, decoder: Decoder, hwm: int = 1000) -> None:
        self._sock = ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(address)
        self.address = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._decoder = decoder
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next message, or None after ``timeout_ms`` without one."""
        if timeout_ms is not None and not self._poller.poll(timeout_ms):
            return None
        return self._decoder.decode(self._sock.recv_multipart(copy=False))

    def close(self) -> None:
        self._sock.close(linger=0)
        self._decoder.close()


class Peers:
    """Which node each destination address is on, as the messages naming it say, and so how a
    tensor reaches it: through this process's shared-memory ring when the destination is on this
    node, as zmq frames (over TCP) when it is not. An address never named is taken to be on this
    node (one host's launcher names no nodes)."""

    def __init__(self, node: str, ring: ShmRing | None, threshold: int) -> None:
        self.node, self._ring, self._threshold = node, ring, threshold
        self._nodes: dict[str, str] = {}

    def learn(self, address: str, node: str) -> None:
        if node:
            self._nodes[address] = node

    def local(self, address: str) -> bool:
        return self._nodes.get(address, self.node) == self.node

    def encoder(self, address: str) -> Encoder:
        return Encoder(self._ring if self.local(address) else None, self._threshold)


class Mailer:
    """One sending thread, socket and encoder per destination.

    ``put`` never blocks: a destination whose high-water mark is reached (a slow or stuck
    stage) holds up only its own queue, not messages to everyone else. Messages to one
    destination keep their order.

    A message that cannot be encoded is handed to ``on_unsent`` (which fails its request) and
    the thread goes on; a thread whose socket fails hands over everything queued behind it and
    ends, and the next ``put`` to that destination starts a fresh one.
    """

    def __init__(self, ctx: zmq.Context, make_encoder: Callable[[str], Encoder], hwm: int = 1000,
                 on_unsent: Callable[[Message, BaseException], None] | None = None) -> None:
        self.on_unsent = on_unsent or _log_unsent
        self._ctx = ctx
        self._make_encoder = make_encoder
        self._hwm = hwm
        self._queues: dict[str, queue.SimpleQueue[Any]] = {}
        self._threads: list[threading.Thread] = []
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()

    def put(self, address: str, msg: Message) -> None:
        with self._lock:
            if address in self._dropped:
                return
            q = self._queues.get(address)
            if q is None:
                q = self._queues[address] = queue.SimpleQueue()
                thread = threading.Thread(target=self._run, args=(address, q), daemon=True,
                                          name=f"mail-{address.rsplit('/', 1)[-1]}")
                thread.start()
                self._threads.append(thread)
            q.put(msg)  # under the lock: never into a queue that _abandon has already drained

    def drop(self, address: str) -> None:
        """A destination that is gone: discard what is queued for it and all that follows."""
        with self._lock:
            self._dropped.add(address)
            q = self._queues.pop(address, None)
        if q is not None:
            q.put(_DROP)

    def revive(self, address: str) -> None:
        """A new peer at a dropped address (a restarted replica may reuse a dead one's TCP port)."""
        with self._lock:
            self._dropped.discard(address)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (bounded by ``timeout`` per destination), then stop."""
        with self._lock:
            queues = list(self._queues.values())
            self._queues.clear()
        for q in queues:
            q.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._closing.set()  # any thread still blocked on a full peer gives up now
        for thread in self._threads:
            thread.join(2 * _RETRY_MS / 1000)

    def _run(self, address: str, q: queue.SimpleQueue[Any]) -> None:
        sock = None
        try:
            encoder = self._make_encoder(address)  # (per destination: shared memory reaches only its own node)
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self._hwm)
            sock.setsockopt(zmq.SNDTIMEO, _RETRY_MS)
            sock.connect(address)
            while (msg := q.get()) is not None and msg is not _DROP:
                try:
                    frames = encoder.encode(msg)
                except _ENCODE_ERRORS as exc:  # that message's request fails alone; the thread goes on
                    self._unsent(msg, exc)
                    continue
                while not self._send(sock, frames):
                    if self._closing.is_set() or address in self._dropped:
                        return  # the peer is gone or we are shutting down: stop waiting on it
        except zmq.ContextTerminated:
            return
        except Exception as exc:  # noqa: BLE001 - this destination's thread ends: its queue fails, a put starts anew
            self._abandon(address, q, exc)
        finally:
            if sock is not None:
                sock.close(linger=0 if address in self._dropped else 2000)

    def _unsent(self, msg: Message, exc: BaseException) -> None:
        try:
            self.on_unsent(msg, exc)
        except Exception:  # noqa: BLE001 - reporting one lost message must not lose the rest
            log.exception("could not report an unsent %s", type(msg).__name__)

    def _abandon(self, address: str, q: queue.SimpleQueue[Any], exc: BaseException) -> None:
        """This destination's thread cannot go on: its queue's messages fail, a later put starts anew."""
        log.error("sending to %s failed; its queued messages fail", address, exc_info=exc)
        with self._lock:
            if self._queues.get(address) is q:
                del self._queues[address]
        while not q.empty():
            msg = q.get()
            if msg is not None and msg is not _DROP:
                self._unsent(msg, exc)

    @staticmethod
    def _send(sock: Any, frames: list[Any]) -> bool:
        """False when the peer's queue stayed full for a retry period (backpressure)."""
        try:
            sock.send_multipart(frames, copy=False)
            return True
        except zmq.Again:
            return False


_RETRY_MS = 200
_DROP = object()
# What encoding a message can raise: a value msgspec refuses (type, range, depth, text), or the
# shared-memory ring failing to take a tensor.
_ENCODE_ERRORS = (msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError, OSError)


def _log_unsent(msg: Message, exc: BaseException) -> None:
    log.error("could not send a %s (request %s): %s: %s", type(msg).__name__, getattr(msg, "rid", "-"),
              type(exc).__name__, exc)
