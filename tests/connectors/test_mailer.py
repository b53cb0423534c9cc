"""The Mailer: order per destination whichever thread sends, and what may be sent at once."""
import threading

import torch
import zmq

from omnistage.connectors.mailer import Mailer
from omnistage.connectors.messages import Chunk, Chunks, Data, Done
from omnistage.connectors.transport import Inbox
from omnistage.connectors.wire import Decoder, Encoder, is_light


def test_light_and_heavy_messages_from_several_threads_keep_each_threads_order(tmp_path):
    ctx = zmq.Context()
    inbox = Inbox(ctx, f"ipc://{tmp_path}/in.sock", Decoder())
    mail = Mailer(ctx, lambda _address: Encoder(None))
    heavy = torch.arange(1 << 16, dtype=torch.float32)

    def send(name: str) -> None:
        for i in range(150):  # light ones go out at once when nothing is queued; heavy ones queue
            mail.put(inbox.address, Data(f"{name}{i}", "x", heavy if i % 3 == 0 else f"{name} {i}"))

    try:
        threads = [threading.Thread(target=send, args=(name,)) for name in "ab"]
        for t in threads:
            t.start()
        got: dict[str, list[int]] = {"a": [], "b": []}
        for _ in range(300):
            msg = inbox.recv(timeout_ms=10_000)
            assert msg is not None
            got[msg.rid[0]].append(int(msg.rid[1:]))
            if int(msg.rid[1:]) % 3 == 0:
                assert torch.equal(msg.value, heavy)
        for t in threads:
            t.join()
        assert got == {"a": list(range(150)), "b": list(range(150))}
    finally:
        mail.close(timeout=1)
        inbox.close()
        ctx.term()


def test_a_message_with_a_tensor_or_big_bytes_is_heavy():
    assert is_light(Chunks([Chunk("r", "text", "hello")]))
    assert is_light(Data("r", "prompt", {"messages": [{"role": "user", "content": "hi"}], "n": 1}))
    assert is_light(Done("r", "llm", 0, {"usage": {"completion_tokens": 3}}))
    assert not is_light(Data("r", "x", {"ids": torch.zeros(3)}))
    assert not is_light(Chunks([Chunk("r", "text", "a"), Chunk("r", "audio", torch.zeros(4))]))
    assert not is_light(Data("r", "x", b"\0" * (1 << 20)))
    assert not is_light(Data("r", "x", [[[[["too deep to look"]]]]]))


def test_a_message_that_cannot_be_encoded_is_reported_and_the_next_one_goes(tmp_path):
    ctx = zmq.Context()
    inbox = Inbox(ctx, f"ipc://{tmp_path}/in.sock", Decoder())
    unsent = []
    mail = Mailer(ctx, lambda _address: Encoder(None), on_unsent=lambda msg, exc: unsent.append((msg.rid, type(exc))))
    try:
        mail.put(inbox.address, Data("first", "x", "hello"))  # (opens the socket: the rest may go at once)
        assert inbox.recv(timeout_ms=10_000).rid == "first"
        mail.put(inbox.address, Data("bad", "x", 1 << 70))  # light, but beyond 64 bits
        mail.put(inbox.address, Data("next", "x", "still here"))
        assert inbox.recv(timeout_ms=10_000).rid == "next"
        assert unsent == [("bad", OverflowError)]
    finally:
        mail.close(timeout=1)
        inbox.close()
        ctx.term()
