"""Modality groups of one LLM stage: text-only and multimodal requests go to their own replicas,
and the controller can move a device between the groups."""
import io

import pytest
from PIL import Image

from omnistage.graph.compile import compile_graph
from omnistage.graph.describe import describe
from omnistage.graph.load import parse_graph
from omnistage.pipeline import Pipeline

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
    with Pipeline(compile_graph(parse_graph(GRAPH))) as p:
        yield p


def test_validate_shows_the_groups():
    text = describe(compile_graph(parse_graph(GRAPH)))
    assert "chat[0] on cpu (1 thread(s), text group)" in text and "chat[1] on cpu (1 thread(s), multimodal group)" in text
    assert "chat/multimodal: 1..2 replicas" in text


def test_requests_go_to_their_group(pipe):
    done = pipe.orchestrator.completions
    before = dict(done)
    ask(pipe, image=False)
    ask(pipe, image=True)
    assert done["chat/text"] - before["chat/text"] == 1
    assert done["chat/multimodal"] - before["chat/multimodal"] == 1


def test_moving_a_device_between_groups_keeps_serving(pipe):
    scaler = pipe.orchestrator.controller.scaler
    assert scaler.move("chat/text", "chat/multimodal", reason="test")
    pipe.orchestrator.wait_until(lambda: sum(r.state == "ready" for r in scaler.replicas_of("chat/multimodal")) == 2,
                                 timeout=90)
    assert sum(r.state == "ready" for r in scaler.replicas_of("chat/multimodal")) == 2
    assert not [r for r in scaler.replicas_of("chat/text") if r.state == "ready"]
    assert ask(pipe, image=False).text is not None  # the empty text group falls back to the others
