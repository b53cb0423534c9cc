"""ZeroMQ transport: one PULL inbox per process, PUSH outboxes connected on demand.

Each socket is touched by exactly one thread: the inbox by the reading thread, the outbox by the
sending thread. Sends block when the peer's high-water mark is reached, which is how
backpressure travels upstream.
"""
from __future__ import annotations

import os
from typing import Any

import zmq

from omnistage.connectors.messages import Message
from omnistage.connectors.wire import Decoder, Encoder


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


class Outbox:
    def __init__(self, ctx: zmq.Context, encoder: Encoder, hwm: int = 1000, send_timeout_ms: int = -1) -> None:
        self._ctx = ctx
        self._encoder = encoder
        self._hwm = hwm
        self._timeout = send_timeout_ms
        self._socks: dict[str, Any] = {}

    def send(self, address: str, msg: Message) -> None:
        sock = self._socks.get(address)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self._hwm)
            sock.setsockopt(zmq.LINGER, 2000)
            sock.setsockopt(zmq.SNDTIMEO, self._timeout)
            sock.connect(address)
            self._socks[address] = sock
        sock.send_multipart(self._encoder.encode(msg), copy=False)

    def forget(self, address: str) -> None:
        """Drop the socket to a peer that is gone, discarding what it still queues."""
        sock = self._socks.pop(address, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
