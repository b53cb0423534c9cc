"""Tensors between two real processes over ZeroMQ (tcp and ipc), with and without shared memory."""
import multiprocessing as mp

import pytest
import torch
import zmq

from omnistage.connectors.messages import Data, Shutdown
from omnistage.connectors.shm import ShmRing, remove_segments, segment_name
from omnistage.connectors.mailer import Mailer
from omnistage.connectors.transport import Inbox, bind_address
from omnistage.connectors.wire import Decoder, Encoder


def _payloads():
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(2, 3, generator=g),
        torch.randn(64, 64, generator=g).to(torch.bfloat16)[:, ::2],
        torch.randint(-5, 5, (3, 4, 5), generator=g, dtype=torch.int64).permute(2, 0, 1),
        torch.zeros(0, 8, dtype=torch.float16),
        torch.randn(1 << 20, generator=g),  # 4 MiB
        torch.tensor(3.5, dtype=torch.float64),
    ]


def _echo(address_queue, protocol, run_dir, session):
    ctx = zmq.Context()
    inbox = Inbox(ctx, bind_address(protocol, "127.0.0.1", run_dir, "echo"), Decoder())
    ring = ShmRing(segment_name(session, "echo"), 4, 8 << 20)
    mail = Mailer(ctx, lambda _address: Encoder(ring, 1024))
    address_queue.put(inbox.address)
    reply_to = address_queue.get()
    while not isinstance(msg := inbox.recv(), Shutdown):
        mail.put(reply_to, Data(msg.rid, msg.port, [t * 2 if t.is_floating_point() else t for t in msg.value]))
    mail.close()
    inbox.close()
    ring.close()
    ctx.term()


@pytest.mark.parametrize("protocol", ["tcp", "ipc"])
def test_tensors_cross_real_processes(protocol, tmp_path):
    session = f"t{tmp_path.name[-8:]}"
    q = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_echo, args=(q, protocol, str(tmp_path), session))
    proc.start()
    ctx = zmq.Context()
    ring = ShmRing(segment_name(session, "main"), 4, 8 << 20)
    inbox = Inbox(ctx, bind_address(protocol, "127.0.0.1", str(tmp_path), "main"), Decoder())
    mail = Mailer(ctx, lambda _address: Encoder(ring, 1024))
    try:
        peer = q.get(timeout=60)
        q.put(inbox.address)
        payload = _payloads()
        for i in range(3):
            mail.put(peer, Data(f"r{i}", "x", payload))
            back = inbox.recv(timeout_ms=30_000)
            assert back is not None and back.rid == f"r{i}"
            for sent, got in zip(payload, back.value):
                want = sent * 2 if sent.is_floating_point() else sent
                assert got.dtype == want.dtype and got.shape == want.shape
                assert torch.equal(got, want)
        mail.put(peer, Shutdown())
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
        mail.close()
        inbox.close()
        ring.close()
        ctx.term()
        assert remove_segments(session) == []  # both sides unlinked their rings


def test_a_stuck_destination_does_not_hold_up_the_others(tmp_path):
    from omnistage.connectors.mailer import Mailer
    ctx = zmq.Context()
    stuck = ctx.socket(zmq.PULL)  # bound but never read: its queue fills up
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.bind(f"ipc://{tmp_path}/stuck.sock")
    live = Inbox(ctx, f"ipc://{tmp_path}/live.sock", Decoder())
    mail = Mailer(ctx, lambda _address: Encoder(None), hwm=1)
    try:
        big = torch.zeros(1 << 20, dtype=torch.uint8)
        for i in range(64):  # far more than the socket buffers hold: this destination blocks
            mail.put(f"ipc://{tmp_path}/stuck.sock", Data(f"s{i}", "x", big))
        mail.put(live.address, Data("r", "x", "hello"))
        got = live.recv(timeout_ms=10_000)
        assert got is not None and got.value == "hello"
        mail.drop(f"ipc://{tmp_path}/stuck.sock")
    finally:
        mail.close(timeout=1)
        live.close()
        stuck.close(linger=0)
        ctx.term()
