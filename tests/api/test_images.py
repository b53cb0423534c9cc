"""/v1/images/generations through the official openai client, against the diffusers pipeline."""
import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from omnistage.diffusion.output import to_uint8
from tests.api.conftest import API_KEY

MODEL = "omnistage-tiny"


def client(server, key="none"):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_generate_images_equal_diffusers(default_server, diffusers_reference):
    out = client(default_server).images.generate(
        model=MODEL, prompt="a red square on a blue field", n=2, size="32x32",
        extra_body={"num_inference_steps": 3, "seed": 5, "guidance_scale": 7.5})
    assert len(out.data) == 2 and out.size == "32x32" and out.output_format == "png"
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d.b64_json)))) for d in out.data]
    for i, got in enumerate(pixels):
        ref = diffusers_reference("sd", "a red square on a blue field", 5 + i, height=32, width=32,
                                  num_inference_steps=3, guidance_scale=7.5)
        assert got.shape == (32, 32, 3)
        assert np.abs(got.astype(int) - to_uint8(ref).astype(int)).max() <= 1
    assert not np.array_equal(pixels[0], pixels[1])  # image i uses seed + i


def test_jpeg_and_default_size(default_server):
    out = client(default_server).images.generate(prompt="a cat", output_format="jpeg",
                                                 extra_body={"num_inference_steps": 2})
    data = base64.b64decode(out.data[0].b64_json)
    assert data[:2] == b"\xff\xd8" and Image.open(io.BytesIO(data)).size == (32, 32)


@pytest.mark.parametrize("kwargs, param", [
    (dict(size="33x32"), "width"), (dict(size="big"), "size"), (dict(n=11), "n"),
    (dict(response_format="url"), "response_format"), (dict(prompt=""), "prompt"),
    (dict(extra_body={"num_inference_steps": 0}), "num_inference_steps"),
    (dict(extra_body={"guidance_scale": -1}), "guidance_scale"),
    (dict(extra_body={"scheduler": "nope"}), "scheduler"),
    (dict(model="dall-e-3"), "model"),
    (dict(extra_body={"num_inference_step": 3}), "num_inference_step"),
    (dict(extra_body={"max_tokens": 3}), "max_tokens"),
    (dict(extra_body={"seed": "7"}), "seed"),
    (dict(style="vivid"), "style"),
    (dict(extra_body={"lora": {"name": "ink"}}), "lora.name"),
    (dict(extra_body={"cache": {"policy": "teacache"}}), "cache.policy"),
])
def test_bad_requests_get_openai_errors(default_server, kwargs, param):
    args = {"prompt": "a cat", **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        client(default_server).images.generate(**args)
    assert err.value.status_code in (400, 404)
    assert err.value.body["param"] == param and err.value.body["message"]


def test_a_graph_without_images_says_what_it_offers(chat_server):
    with pytest.raises(openai.BadRequestError) as err:
        client(chat_server, API_KEY).images.generate(prompt="a cat")
    assert "cannot produce image" in err.value.body["message"] and "offers: logprobs, text" in err.value.body["message"]


def test_chat_with_an_image_still_works_on_the_any_to_any_graph(default_server):
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (200, 30, 30)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is this?"}]}]
    c = client(default_server)
    full = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True) if ch.choices)
    assert full.choices[0].message.content == streamed and full.usage.completion_tokens > 0
