"""prefill -> decode hand-off (through the real wire format) equals the colocated ar stage."""
import pytest
import torch
from PIL import Image

from omnistage.checkpoints import resolve_model
from omnistage.connectors.messages import Data
from omnistage.connectors.shm import ShmRing
from omnistage.connectors.wire import Decoder, Encoder
from omnistage.graph.compile import compile_file
from omnistage.stages.kinds.ar import ArStage, build_stage
from omnistage.stages.kinds.disagg import DecodeStage, PrefillStage, _span_from_wire, _span_to_wire
from omnistage.stages.worker.stage import StageRequest
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def stages():
    plan = compile_file(ROOT / "examples" / "text_chat_pd.yaml", resolve_model)
    prefill = build_stage(PrefillStage, plan.stages["prefill"], "cpu")
    decode = build_stage(DecodeStage, plan.stages["decode"], "cpu")
    colocated = build_stage(ArStage, plan.stages["decode"], "cpu")
    return prefill, decode, colocated


def drain(stage):
    out = {}
    while stage.has_work():
        for o in stage.step():
            rec = out.setdefault(o.rid, {"text": "", "tokens": [], "ports": {}, "meta": {}})
            rec["text"] += o.ports.get("text", "")
            rec["tokens"] += o.ports.get("tokens", [])
            rec["ports"].update(o.ports)
            rec["meta"].update(o.meta)
    return out


def through_wire(value, tmp_path):
    ring = ShmRing(f"omnistage-test-{tmp_path.name}", 2, 8 << 20)
    try:
        return Decoder().decode(Encoder(ring, 1024).encode(Data("r", "kv", value))).value
    finally:
        ring.close()


REQUESTS = [
    ({"prompt": "Tell me a story about a cat " * 3}, {"temperature": 0, "max_tokens": 20}),
    ({"messages": [{"role": "user", "content": "Hello"}]}, {"temperature": 0.8, "seed": 5, "max_tokens": 16}),
    ({"prompt": "red green blue"}, {"temperature": 0, "max_tokens": 1}),
    ({"prompt": "Numbers: 1 2 3"}, {"temperature": 0.7, "top_k": 20, "seed": 9, "max_tokens": 12,
                                    "ignore_eos": True}),
]


def test_disaggregated_tokens_equal_colocated(stages, tmp_path):
    prefill, decode, colocated = stages
    for i, (inputs, params) in enumerate(REQUESTS):
        prefill.add(StageRequest(f"r{i}", dict(inputs), params))
        colocated.add(StageRequest(f"r{i}", dict(inputs), params))
    handoffs = drain(prefill)
    want = drain(colocated)
    for rid, rec in handoffs.items():
        decode.add(StageRequest(rid, {"kv": through_wire(rec["ports"]["kv"], tmp_path)}, REQUESTS[int(rid[1:])][1]))
    got = drain(decode)
    for rid in want:
        assert got[rid]["tokens"] == want[rid]["tokens"], rid
        assert got[rid]["text"] == want[rid]["text"], rid
        assert got[rid]["meta"]["finish_reason"] == want[rid]["meta"]["finish_reason"]
    assert len(got["r2"]["tokens"]) == 1  # finished at the prefill stage
    assert prefill.engine.blocks.num_free == prefill.engine.blocks.blocks.__len__()


@pytest.mark.parametrize("family", ["qwen3", "qwen3-moe", "gemma3"])
def test_disaggregated_families_equal_colocated(family, tmp_path):
    from omnistage.graph.compile import compile_text
    text = (ROOT / "examples" / "text_chat_pd.yaml").read_text().replace("tiny:qwen2", f"tiny:{family}")
    plan = compile_text(text, resolve_model, base_dir=ROOT / "examples")
    prefill, decode = build_stage(PrefillStage, plan.stages["prefill"], "cpu"), build_stage(DecodeStage, plan.stages["decode"], "cpu")
    colocated = build_stage(ArStage, plan.stages["decode"], "cpu")
    for i, (inputs, params) in enumerate(REQUESTS):
        prefill.add(StageRequest(f"r{i}", dict(inputs), params))
        colocated.add(StageRequest(f"r{i}", dict(inputs), params))
    handoffs, want = drain(prefill), drain(colocated)
    for rid, rec in handoffs.items():
        decode.add(StageRequest(rid, {"kv": through_wire(rec["ports"]["kv"], tmp_path)}, REQUESTS[int(rid[1:])][1]))
    got = drain(decode)
    assert {rid: got[rid]["tokens"] for rid in want} == {rid: want[rid]["tokens"] for rid in want}


def test_disaggregated_qwen2_vl_with_an_image(tmp_path):
    from omnistage.graph.compile import compile_text
    text = (ROOT / "examples" / "text_chat_pd.yaml").read_text().replace("tiny:qwen2", "tiny:qwen2-vl")
    text = text.replace("inputs: {messages: request.messages, prompt: request.prompt}",
                        "inputs: {messages: request.messages, images: request.images}")
    plan = compile_text(text, resolve_model, base_dir=ROOT / "examples")
    prefill = build_stage(PrefillStage, plan.stages["prefill"], "cpu")
    decode = build_stage(DecodeStage, plan.stages["decode"], "cpu")
    colocated = build_stage(ArStage, plan.stages["decode"], "cpu")
    image = Image.fromarray((torch.rand(84, 56, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy())
    inputs = {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}],
              "images": [image]}
    params = {"temperature": 0, "max_tokens": 12}
    prefill.add(StageRequest("v", dict(inputs), params))
    colocated.add(StageRequest("v", dict(inputs), params))
    handoff = through_wire(drain(prefill)["v"]["ports"]["kv"], tmp_path)
    decode.add(StageRequest("v", {"kv": handoff}, params))
    assert drain(decode)["v"]["tokens"] == drain(colocated)["v"]["tokens"]


def test_a_part_of_a_split_item_crosses_the_wire_with_its_rows():
    from omnistage.ar_engine.sequence import MediaSpan
    from omnistage.encoders.video import VideoItem
    video = VideoItem([], (3, 4, 4), 12, "v", _pixels=torch.ones(48, 8))
    part = MediaSpan(40, 4, "v", grid_thw=(3, 4, 4), source=video, offset=8)  # rows 8..11 of 12
    back = _span_from_wire(_span_to_wire(part))
    assert (back.start, back.length, back.offset, back.content_hash) == (40, 4, 8, "v")
    assert back.source.tokens == 12 and torch.equal(back.source.pixel_values, video.pixel_values)
