"""Modality groups of one LLM stage: text-only and multimodal requests go to their own replicas,
and the controller moves a replica between the groups without reloading it."""
import io

import pytest
from PIL import Image

from omnistage.api.metrics import Metrics
from omnistage.checkpoints import resolve_model
from omnistage.graph.compile import compile_text
from omnistage.graph.describe import describe
from omnistage.pipeline import Pipeline
from omnistage.stages.runtime.replicas import ReplicaState

GRAPH = """
name: vl-groups
models:
  vl: {path: "tiny:qwen2-vl"}
stages:
  vision:
    kind: encode
    model: vl
    inputs: {images: request.images}
  chat:
    kind: ar
    model: vl
    inputs: {messages: request.messages, images: request.images, image_embeds: vision.embeddings}
    outputs: {text: response.text}
    resources:
      groups: {text: 1, multimodal: {min: 1, max: 2}}
elastic:
  enabled: false
  devices: [cpu, cpu, cpu]
"""


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def ask(pipe, image: bool):
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": "hi"}]
    return pipe.generate(messages=[{"role": "user", "content": content}], images=[png()] if image else None,
                         max_tokens=4, temperature=0)


@pytest.fixture(scope="module")
def pipe():
    with Pipeline(compile_text(GRAPH, resolve_model)) as p:
        yield p


def test_validate_shows_the_groups():
    text = describe(compile_text(GRAPH, resolve_model))
    assert "chat[0] on cpu (1 thread(s), text group)" in text and "chat[1] on cpu (1 thread(s), multimodal group)" in text
    assert "chat/multimodal: 1..2 replicas" in text


def test_requests_go_to_their_group(pipe):
    table, done = pipe.orchestrator.table, pipe.orchestrator.completions
    before = dict(done)
    for image in (False, True):
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": "hi"}]
        handle = pipe.submit(messages=[{"role": "user", "content": content}], images=[png()] if image else None,
                             max_tokens=32, ignore_eos=True, temperature=0)
        holders = [r.group for r in table.of("chat") if handle.rid in r.inflight]  # picked at submit
        assert holders == ["multimodal" if image else "text"]
        assert handle.result(120).usage["completion_tokens"] == 32
    assert done["chat/text"] - before["chat/text"] == 1
    assert done["chat/multimodal"] - before["chat/multimodal"] == 1


def test_a_move_between_groups_regroups_the_replica_at_once_under_load(pipe):
    orch = pipe.orchestrator
    scaler = pipe.controller.scaler
    [text_replica] = scaler.replicas_of("chat/text")
    before, processes = dict(orch.completions), len(orch.table.of("chat"))
    held = [pipe.submit(messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=16, temperature=0)
            for i in range(4)]
    holding = len(text_replica.inflight)
    assert scaler.move("chat/text", "chat/multimodal", reason="test")
    assert holding > 0
    # No drain, no new process: the same replica now belongs to the multimodal group.
    assert len(orch.table.of("chat")) == processes and text_replica.state is ReplicaState.READY
    assert text_replica.group == "multimodal" and len(scaler.replicas_of("chat/multimodal")) == 2
    assert scaler.log[-1].kind == "regroup" and "chat/text -> chat/multimodal" in scaler.log[-1].reason
    # What it held finishes there, once each, and counts in the requests' own group.
    assert all(h.result(120).text for h in held)
    assert ask(pipe, image=True).text is not None and ask(pipe, image=False).text is not None  # text falls back
    assert orch.completions["chat/text"] - before["chat/text"] == 5
    assert orch.completions["chat/multimodal"] - before["chat/multimodal"] == 1
    text = Metrics().render(orch.table.all(), scaler.log, {"chat": ["text", "multimodal"]}).decode()
    assert 'omnistage_group_replicas{group="multimodal",stage="chat"} 2.0' in text
    assert 'omnistage_group_replicas{group="text",stage="chat"} 0.0' in text and 'kind="regroup"' in text
