"""ZeroMQ transport: one PULL inbox per process, PUSH outboxes connected on demand.

The inbox is read by one thread; outgoing messages go through the Mailer (``mailer``). Sends
block when the peer's high-water mark is reached, which is how backpressure travels upstream.
"""
from __future__ import annotations

import os

import zmq

from omnistage.connectors.messages import Message
from omnistage.connectors.shm import ShmRing
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


class Peers:
    """Which node each destination address is on, as the messages naming it say, and so how a
    tensor reaches it: through this process's shared-memory ring when the destination is on this
    node, as zmq frames (over TCP) when it is not. An address never named is taken to be on this
    node (one host's launcher names no nodes)."""

    def __init__(self, node: str, ring: ShmRing | None, threshold: int, cuda_ipc: bool = False) -> None:
        """``cuda_ipc``: a tensor on the GPU a destination of this node runs on goes as its CUDA
        IPC handle."""
        self.node, self._ring, self._threshold, self._cuda_ipc = node, ring, threshold, cuda_ipc
        self._nodes: dict[str, str] = {}
        self._gpus: dict[str, str] = {}  # destination -> the GPU it runs on ("cuda:N")

    def learn(self, address: str, node: str, device: str = "") -> None:
        if node:
            self._nodes[address] = node
        if device:
            self._gpus[address] = device

    def local(self, address: str) -> bool:
        return self._nodes.get(address, self.node) == self.node

    def encoder(self, address: str) -> Encoder:
        local = self.local(address)
        card = self._gpus.get(address) if self._cuda_ipc and local else None
        return Encoder(self._ring if local else None, self._threshold, ipc_device=card)
