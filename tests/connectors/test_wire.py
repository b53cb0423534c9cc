import msgspec
import numpy as np
import pytest
import torch

from omnistage.connectors.messages import (MESSAGE_TYPES, PAYLOAD_TYPES, Abort, Admit, Chunk, Chunks, Data, Dest, Done,
                                           Failed, KvHandoff, MediaEmbedding, Part, Probe, ProbeResult, Progress,
                                           PromptEmbeds, Ready, Shutdown, StartFailed, Stats, ThinkerStates, WireSpan)
from omnistage.connectors.shm import ShmRing
from omnistage.connectors.wire import Decoder, Encoder, Unreadable

SAMPLES = [
    Ready("llm", 1, 4242, "ipc:///tmp/x.sock"),
    StartFailed("llm", 0, "Traceback: boom"),
    Admit("r1", ["messages"], {"text": [Dest("tcp://127.0.0.1:5555", "text"), Dest("ipc://s", "text", True)]},
          {"max_tokens": 4, "stop": ["\n"]}, "ipc://sink"),
    Data("r1", "messages", [{"role": "user", "content": "hi"}]),
    Chunk("r1", "text", "hel"),
    Chunks([Chunk("r1", "text", "hel"), Chunk("r2", "audio", torch.ones(3))]),
    Done("r1", "llm", 0, {"completion_tokens": 3}),
    Failed("r1", "llm", 0, "bad", 400),
    Abort("r1"),
    Probe("r1", {"images": [b"\x89PNG"], "messages": []}, {"seed": 1}, "ipc://sink"),
    ProbeResult("r1", "llm", 0, [0, 2]),
    ProbeResult("r1", "llm", 0, [], "bad image", 400),
    Stats("llm", 1, {"waiting": 3.0, "kv_usage": 0.25}),
    Part("r1", "states", {"tokens": [5], "hidden": torch.ones(2, 4)}),
    Part("r1", "states", None, last=True),
    Shutdown(),
]


def test_every_message_type_has_a_sample():
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    frames = Encoder().encode(msg)
    assert frames[0] == bytes((MESSAGE_TYPES.index(type(msg)),))
    back = Decoder().decode(frames)
    assert type(back) is type(msg)
    assert _plain(back) == _plain(msg)


PAYLOADS = [
    MediaEmbedding("abc", torch.randn(4, 8), [1, 2, 2]),
    [MediaEmbedding("a", torch.ones(1, 2)), MediaEmbedding("b", torch.zeros(2, 2), [1, 2, 4])],
    KvHandoff([1, 2, 3], 7, torch.randn(2, 2, 3, 1, 4), None, "x", torch.zeros(5, dtype=torch.uint8),
              [WireSpan(0, 2, "h", None, [1, 2, 2], torch.ones(4, 3), 0, 2)], torch.arange(9).reshape(3, 3), -2),
    KvHandoff([1], 2, None, "stop", "", None, [], None, 0),
    ThinkerStates([5], torch.ones(2, 4), torch.zeros(2, 4), [1, 2], torch.zeros(3, 2, dtype=torch.long), 1),
    ThinkerStates([6], torch.ones(1, 4), torch.zeros(1, 4)),
    PromptEmbeds({"embeds": torch.ones(1, 3, 4), "pooled": torch.ones(1, 4)}, None),
    [Progress(1, 20), Progress(2, 20)],
]


def test_every_payload_type_has_a_sample():
    kinds = {type(v[0] if isinstance(v, list) else v) for v in PAYLOADS}
    assert kinds == set(PAYLOAD_TYPES)


@pytest.mark.parametrize("value", PAYLOADS, ids=lambda v: type(v[0] if isinstance(v, list) else v).__name__)
def test_payloads_come_back_as_their_own_types(value):
    for msg in (Data("r1", "port", value), Part("r1", "port", value),
                Chunks([Chunk("r1", "image", value), Chunk("r2", "text", "plain text stays plain")])):
        back = Decoder().decode(Encoder().encode(msg))
        got = back.items[0].value if isinstance(back, Chunks) else back.value
        want = value
        assert type(got) is type(want)
        if isinstance(want, list):
            assert [type(g) for g in got] == [type(w) for w in want]
        assert _plain(got) == _plain(want)
        if isinstance(back, Chunks):
            assert back.items[1].value == "plain text stays plain" and back.items[1].payload == 0


def test_a_payload_that_does_not_fit_its_type_arrives_plain_and_is_logged(caplog):
    """(A sender's bug: the receiving stage fails that request; the receiving thread lives on.)"""
    body = msgspec.msgpack.encode(Data("r1", "kv", ["hash", "not a tensor", []], payload=1))
    back = Decoder().decode([bytes((MESSAGE_TYPES.index(Data),)), body])
    assert back.value == ["hash", "not a tensor", []] and "expected Tensor" in caplog.text and "r1" in caplog.text
    mixed = Decoder().decode(Encoder().encode(Data("r1", "x", [Progress(1, 2), {"step": 2}])))
    assert mixed.payload == 0 and mixed.value == [[1, 2], {"step": 2}]


def _plain(value):
    """Structs as nested builtins, tensors as lists, for comparison."""
    if isinstance(value, msgspec.Struct):
        return {k: _plain(v) for k, v in msgspec.structs.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return (str(value.dtype), value.tolist())
    return value


TENSORS = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).to(torch.bfloat16),
    "f16_noncontig": torch.randn(4, 6).to(torch.float16).t(),
    "i64_scalar": torch.tensor(7),
    "bool": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 3),
    "u8_big": torch.randint(0, 255, (300_000,), dtype=torch.uint8),
}


@pytest.mark.parametrize("use_shm", [False, True])
def test_tensors_inside_values_round_trip(use_shm, tmp_path):
    ring = ShmRing(f"omnistage-test-{tmp_path.name}", 4, 1 << 20) if use_shm else None
    try:
        frames = Encoder(ring, shm_threshold=1024).encode(Data("r", "p", {"t": dict(TENSORS), "s": "x"}))
        out = Decoder().decode(frames).value
        for name, t in TENSORS.items():
            got = out["t"][name]
            assert got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got, t), name
        assert out["s"] == "x"
        # large tensors went to shared memory (only the header travels), small ones as frames
        assert (len(frames) < 2 + len(TENSORS)) == use_shm
    finally:
        if ring is not None:
            ring.close()


@pytest.mark.parametrize("use_shm", [False, True])
def test_big_bytes_travel_out_of_band_and_arrive_as_bytes(use_shm, tmp_path):
    """An image file in a probe, a response chunk or a data value: out of the msgpack body (a
    slot or a frame of its own), bytes again on arrival; small bytes stay inline; the sender's
    message is not changed."""
    ring = ShmRing(f"omnistage-test-{tmp_path.name}", 8, 1 << 20) if use_shm else None
    try:
        enc, dec = Encoder(ring, shm_threshold=1024), Decoder()
        files = [bytes(range(256)) * 40, b"\x89PNG" + bytes(5000)]
        inputs = {"images": files, "messages": [{"role": "user", "content": "hi"}], "tiny": b"abc"}
        probe = Probe("r", inputs, {"temperature": 0}, "sink")
        frames = enc.encode(probe)
        assert max(len(bytes(f)) for f in frames[:2]) < 1024  # the files are not in the body
        assert len(frames) == (2 if use_shm else 4)
        got = dec.decode(frames)
        assert got.inputs == inputs and all(type(f) is bytes for f in got.inputs["images"])
        assert probe.inputs["images"][0] is files[0]
        chunks = Chunks([Chunk("r", "image", {"format": "png", "data": files[1]}), Chunk("r", "text", "x")])
        assert dec.decode(enc.encode(chunks)).items[0].value["data"] == files[1]
        assert dec.decode(enc.encode(Data("r", "audio", files[0]))).value == files[0]
    finally:
        if ring is not None:
            ring.close()


def test_shm_ring_falls_back_when_full_and_reuses_released_slots(tmp_path):
    ring = ShmRing(f"omnistage-test-{tmp_path.name}", 2, 4096)
    try:
        enc, dec = Encoder(ring, shm_threshold=16), Decoder()
        t = torch.arange(64, dtype=torch.int32)
        first, second, third = (enc.encode(Data("r", "p", t)) for _ in range(3))
        assert len(first) == len(second) == 2 and len(third) == 3  # ring full: third went as a frame
        assert torch.equal(dec.decode(first).value, t)  # releases slot 0
        assert len(enc.encode(Data("r", "p", t))) == 2
        too_big = torch.zeros(5000, dtype=torch.uint8)
        assert len(enc.encode(Data("r", "p", too_big))) == 3
    finally:
        ring.close()


def test_a_value_that_cannot_be_brought_in_fails_only_its_request(tmp_path):
    ring = ShmRing(f"omnistage-test-{tmp_path.name}", 4, 1 << 16)
    big, small = torch.arange(4096, dtype=torch.int32), torch.ones(3)
    try:
        enc = Encoder(ring, shm_threshold=1024)
        chunks = enc.encode(Chunks([Chunk("r1", "audio", small), Chunk("r2", "audio", {"pcm": [big]}),
                                    Chunk("r3", "progress", Progress(1, 4))]))
        data = enc.encode(Data("r4", "p", big))
    finally:
        ring.close()  # (the sender's ring is gone: its slots cannot be read)
    with pytest.raises(Unreadable) as lost:
        Decoder().decode(chunks)
    assert list(lost.value.failed) == ["r2"] and "FileNotFoundError" in lost.value.failed["r2"]
    assert [c.rid for c in lost.value.rest.items] == ["r1", "r3"] and torch.equal(lost.value.rest.items[0].value, small)
    assert lost.value.rest.items[1].value == Progress(1, 4)  # (the rest is delivered as its payload types)
    with pytest.raises(Unreadable) as lost:
        Decoder().decode(data)
    assert list(lost.value.failed) == ["r4"] and lost.value.rest is None


def test_pickle_is_refused():
    with pytest.raises(TypeError, match="cannot send a object"):
        Encoder().encode(Data("r", "p", object()))


def test_numpy_arrays_travel_as_tensors_and_unsendable_values_are_found():
    import numpy as np

    from omnistage.connectors.wire import unsendable
    enc, dec = Encoder(), Decoder()
    got = dec.decode(enc.encode(Data("r", "audio", {"array": np.arange(4, dtype=np.float32)})))
    assert torch.equal(got.value["array"], torch.arange(4, dtype=torch.float32))
    assert unsendable({"a": [1, "x", np.zeros(2), torch.ones(1)]}, "audio") is None
    assert unsendable({"a": [1, object()]}, "audio") == "audio.a[1]: a object"


@pytest.mark.parametrize("value, why", [
    (1 << 64, "p: integer out of the 64-bit range"),
    (-(1 << 63) - 1, "p: integer out of the 64-bit range"),
    ({"k": ["x\ud800y"]}, "p.k[0]: not valid Unicode text (it holds a lone surrogate)"),
    ({"\udfff": 1}, "p: a key that is not valid text"),
    ([np.float64(1.5)], "p[0]: a float64"),
])
def test_values_the_encoder_would_refuse_are_found_first(value, why):
    """Each value unsendable() lets through must encode: the ones it names are exactly those the
    encoder would fail on."""
    from omnistage.connectors.wire import unsendable
    assert unsendable(value, "p") == why
    with pytest.raises((OverflowError, UnicodeEncodeError, TypeError, ValueError)):
        Encoder().encode(Data("r", "p", value))
    assert unsendable((1 << 64) - 1, "p") is None and unsendable(-(1 << 63), "p") is None
    Encoder().encode(Data("r", "p", [(1 << 64) - 1, -(1 << 63)]))


def test_deep_nesting_is_named_before_it_reaches_the_encoder():
    from omnistage.connectors.wire import MAX_DEPTH, unsendable
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert unsendable(deep, "p") == "p" + "[0]" * MAX_DEPTH + f": nested more than {MAX_DEPTH} levels deep"
