"""The real server (uvicorn, real workers) driven by the official openai client and raw httpx."""
import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.api.conftest import API_KEY

MODEL = "text-chat"


def client(server, key=API_KEY):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def test_models_and_chat(chat_server, hf_greedy):
    c = client(chat_server)
    assert [m.id for m in c.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": "Hello there"}]
    done = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    tokens, text = hf_greedy(messages=messages, max_tokens=12)
    assert done.choices[0].message.content == text
    assert done.usage.completion_tokens == len(tokens) and done.usage.prompt_tokens > 0
    assert done.choices[0].finish_reason in ("stop", "length")


def test_streamed_text_equals_non_streamed(chat_server):
    c = client(chat_server)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=16,
              temperature=0.8, seed=7)
    full = c.chat.completions.create(**kw).choices[0].message.content
    stream = c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    pieces, usage, reasons = [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == full and usage.completion_tokens >= 1 and reasons[-1] in ("stop", "length")


def test_n_choices_and_completions(chat_server):
    c = client(chat_server)
    many = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3,
                                     max_tokens=5, temperature=1.0, seed=1)
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    done = c.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens >= 1


@pytest.mark.parametrize("payload,status,words", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "does not exist"),
    (b'{"model": "text-chat"}', 400, "messages"),
    (b'{"model": "text-chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400,
     "temperature"),
    (b'{"model": "text-chat", "messages": [{"role": "user", "content": [{"type": "image_url", '
     b'"image_url": {"url": "data:image/png;base64,!!!"}}]}]}', 400, "does not accept images"),
    (b'{"model": "text-chat", "messages": [{"role": "user", "content": "x"}], "modalities": ["audio"]}', 400,
     "offers: logprobs, text"),
    (b'{"model": "text-chat", "messages": [], "pad": "' + b"x" * (2 << 20) + b'"}', 413, "larger than"),
])
def test_errors_have_openai_shape_and_the_server_keeps_serving(chat_server, payload, status, words):
    r = httpx.post(f"{chat_server.url}/v1/chat/completions", content=payload, timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert client(chat_server).models.list().data


@pytest.mark.parametrize("extra, param, words", [
    ({"max_token": 5}, "max_token", "unknown parameter 'max_token'; did you mean 'max_tokens'?"),
    ({"temprature": 0.5}, "temprature", "did you mean 'temperature'?"),
    ({"voice": "alloy"}, "voice", "unknown parameter 'voice'"),
    ({"temperature": 2.5}, "temperature", "temperature must be between 0 and 2, got 2.5"),
    ({"top_k": -1}, "top_k", "top_k must be >= 0"),
    ({"seed": 2 ** 70}, "seed", "seed must be >= 0 and < "),
    ({"stop": 5}, "stop", "stop must be a string or a list of strings"),
    ({"ignore_eos": "yes"}, "ignore_eos", "ignore_eos must be true or false"),
    ({"top_logprobs": "abc"}, "top_logprobs", "top_logprobs must be an integer"),
    ({"stream": "yes"}, "stream", "stream must be true or false"),
    ({"stream_options": "x"}, "stream_options", "stream_options must be an object"),
    ({"functions": [{"name": "f"}]}, "functions", "functions is not supported"),
    ({"presence_penalty": 2.5}, "presence_penalty", "presence_penalty must be between -2 and 2"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias", "is not a token id of this model"),
    ({"logit_bias": {"3": 101}}, "logit_bias", "must be between -100 and 100"),
])
def test_unknown_and_out_of_range_parameters_are_refused_by_name(chat_server, extra, param, words):
    c = client(chat_server)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                  extra_body=extra)
    assert err.value.body["param"] == param and words in err.value.body["message"]


def test_what_clients_send_by_default_is_accepted(chat_server):
    done = client(chat_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, user="u1", store=False,
        metadata={"k": "v"}, presence_penalty=0, frequency_penalty=0.0, tools=[], extra_body={"top_k": 5})
    assert done.usage.completion_tokens >= 1
    penalized = client(chat_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, presence_penalty=1.0,
        frequency_penalty=0.5, logit_bias={"7": 2.5})
    assert penalized.usage.completion_tokens >= 1
    text = client(chat_server).completions.create(model=MODEL, prompt="x", max_tokens=2, echo=False, best_of=1)
    assert text.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError, match="unknown parameter 'max_token'"):
        client(chat_server).completions.create(model=MODEL, prompt="x", extra_body={"max_token": 2})


def test_a_model_is_retrieved_by_its_id(chat_server):
    c = client(chat_server)
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("no-such/model")
    assert err.value.body["code"] == "model_not_found"


def test_api_key_is_required(chat_server):
    with pytest.raises(openai.AuthenticationError):
        client(chat_server, key="wrong").models.list()
    assert httpx.get(f"{chat_server.url}/health").status_code == 200  # health stays open


def test_health_and_metrics(chat_server):
    health = httpx.get(f"{chat_server.url}/health").json()
    assert health["status"] == "ok" and health["replicas"] == {"llm[0]": "ready"}
    assert health["stages"] == {"llm": "ready"}
    assert httpx.get(f"{chat_server.url}/live").json() == {"status": "ok"}
    client(chat_server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "m"}],
                                                max_tokens=3)
    text = httpx.get(f"{chat_server.url}/metrics").text
    assert "omnistage_time_to_first_token_seconds_count" in text
    assert 'omnistage_stage_replica_ready{replica="0",stage="llm"} 1.0' in text
    for name in ("waiting", "running", "kv_usage", "prefix_hit_rate", "step_seconds"):
        assert f'omnistage_stage_{name}{{replica="0",stage="llm"}}' in text


def test_image_chat_with_a_data_url(vl_server):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    c = openai.OpenAI(base_url=f"{vl_server.url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What colour is this?"}]}]
    kw = dict(model="vl-chat", messages=messages, max_tokens=8, temperature=0)
    full = c.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                       if ch.choices)
    assert streamed == full and full
    bad = dict(kw, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"truncated").decode()}}, {"type": "text", "text": "?"}]}])
    with pytest.raises(openai.BadRequestError, match="cannot decode image"):
        c.chat.completions.create(**bad)


def test_logprobs(chat_server):
    c = client(chat_server)
    done = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
                                     temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = done.choices[0].logprobs.content
    assert len(content) == done.usage.completion_tokens == 6
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob == max(t.logprob for t in entry.top_logprobs)  # greedy picked the best
    assert "".join(e.token for e in content) == done.choices[0].message.content
    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
                                       temperature=0, logprobs=True, stream=True, extra_body={"ignore_eos": True})
    streamed = [e for ch in stream for choice in ch.choices if choice.logprobs for e in choice.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
