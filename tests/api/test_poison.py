"""Requests built to break the server: each gets a clear 4xx (in OpenAI's shape), and the very
next chat request is answered at once (no thread of the server died on the way)."""
import json
import time

import httpx
import pytest

from tests.api.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
HI = [{"role": "user", "content": "hi"}]


def _chat(**extra):
    return json.dumps({"model": "text-chat", "messages": HI, "max_tokens": 2, **extra}).encode()


def _deep(n):
    return b'{"model": "text-chat", "messages": ' + b"[" * n + b"]" * n + b"}"


POISON = {
    "seed beyond 64 bits": (_chat(seed=2 ** 70), 400, "seed", "seed must be"),
    "max_tokens beyond 64 bits": (_chat(max_tokens=2 ** 70), 400, "max_tokens", "out of the 64-bit range"),
    "stop_token_ids beyond 64 bits": (_chat(stop_token_ids=[2 ** 64]), 400, "stop_token_ids", "64-bit"),
    "lone surrogate in a message": (b'{"model": "text-chat", "max_tokens": 2, "messages": '
                                    b'[{"role": "user", "content": "x\\ud800y"}]}', 400, "messages",
                                    "lone surrogate"),
    "lone surrogate in stop": (b'{"model": "text-chat", "max_tokens": 2, "stop": "\\udfff", "messages": '
                               b'[{"role": "user", "content": "x"}]}', 400, "stop", "lone surrogate"),
    "100k-deep JSON": (_deep(100_000), 400, None, "nested too deeply"),
    "deep but parseable JSON": (_deep(500), 400, "messages[0].role", "messages"),
    "top_logprobs not a number": (_chat(logprobs=True, top_logprobs="abc"), 400, "top_logprobs", "integer"),
    "stream_options not an object": (_chat(stream_options="x"), 400, "stream_options", "object"),
    "stream as a string": (_chat(stream="yes"), 400, "stream", "true or false"),
    "stop as a number": (_chat(stop=5), 400, "stop", "a string or a list"),
    "audio to a graph that cannot hear": (_chat(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]), 400, None, "audio"),
    "a tool without a name": (_chat(tools=[{"type": "function", "function": {}}]), 400, "tools[0].function.name",
                              "letters"),
    "not JSON": (b"{nope", 400, None, "not valid JSON"),
    "a JSON list": (b"[1, 2]", 400, None, "JSON object"),
}


def _next_chat_answers_at_once(server):
    start = time.monotonic()
    r = httpx.post(f"{server.url}/v1/chat/completions", content=_chat(), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("name", sorted(POISON))
def test_poison_gets_a_4xx_and_the_next_chat_answers(chat_server, name):
    body, status, param, words = POISON[name]
    r = httpx.post(f"{chat_server.url}/v1/chat/completions", content=body, headers=AUTH, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error
    if param is not None:
        assert error["param"] == param
    assert r.headers["x-request-id"]
    _next_chat_answers_at_once(chat_server)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/nothing-here", 404), ("GET", "/v1/chat/completions", 405), ("DELETE", "/health", 405),
])
def test_404_and_405_are_json(chat_server, method, path, status):
    r = httpx.request(method, f"{chat_server.url}{path}", headers=AUTH, timeout=30)
    assert r.status_code == status
    assert r.json()["error"]["code"] in ("not_found", "method_not_allowed")


def test_a_chunked_body_past_the_limit_is_refused(chat_server):
    def body():
        for _ in range(64):  # 16 MiB offered in 256 KiB pieces, no length given; the server's limit is 1 MiB
            yield b"x" * (256 << 10)
    try:
        r = httpx.post(f"{chat_server.url}/v1/chat/completions", content=body(), headers=AUTH, timeout=30)
        assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    except httpx.HTTPError:
        pass  # the server may answer and close before the client has finished sending: also a refusal
    _next_chat_answers_at_once(chat_server)


def test_bearer_is_case_insensitive_and_request_ids_come_back(chat_server):
    headers = {"authorization": f"bearer {API_KEY}", "x-request-id": "my-trace-1"}
    r = httpx.get(f"{chat_server.url}/v1/models", headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["x-request-id"] == "my-trace-1"
    wrong = httpx.get(f"{chat_server.url}/v1/models", headers={"authorization": f"Bearer {API_KEY}x"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    odd = httpx.get(f"{chat_server.url}/v1/models", headers={**AUTH, "x-request-id": "a b"}, timeout=30)
    assert odd.headers["x-request-id"].startswith("req-")  # an unsafe id is replaced, not echoed


def test_failures_are_counted_by_status(chat_server):
    def count(status):
        text = httpx.get(f"{chat_server.url}/metrics", timeout=30).text
        line = f'omnistage_requests_total{{endpoint="/v1/chat/completions",status="{status}"}} '
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)
    before400, before200 = count(400), count(200)
    httpx.post(f"{chat_server.url}/v1/chat/completions", content=_chat(seed=-1), headers=AUTH, timeout=30)
    _next_chat_answers_at_once(chat_server)
    assert count(400) == before400 + 1 and count(200) == before200 + 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_stops_its_request_in_every_stage(chat_server, stream):
    import socket
    body = _chat(max_tokens=1_000_000, ignore_eos=True, stream=stream)
    orch = chat_server.pipeline.orchestrator
    with socket.create_connection(("127.0.0.1", chat_server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        # Admitted (held by its replica) means it is generating: it asks for a million tokens.
        assert orch.table.wait_until(lambda: any(r.inflight for r in orch.table.all()), 30), "it never started"
    # The connection is closed: the request leaves the orchestrator and its replica.
    assert orch.table.wait_until(lambda: not orch.requests and not any(r.inflight for r in orch.table.all()), 5)
    _next_chat_answers_at_once(chat_server)
