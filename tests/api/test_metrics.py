"""Every series docs/operations.md lists exists on /metrics, and the per-request ones move."""
import re

import httpx

from tests.conftest import ROOT

DOCUMENTED = re.findall(r"^\| `(omnistage_[a-z_]+)` \|", (ROOT / "docs" / "operations.md").read_text(), re.M)
# Series that only move on events a healthy run does not have (or that are gauges).
STILL = {"omnistage_stage_restarts_total", "omnistage_stage_replicas", "omnistage_stage_replica_ready",
         "omnistage_stage_inflight_requests", "omnistage_stage_internal_errors", "omnistage_api_internal_errors",
         "omnistage_goodput_requests_per_second"}  # (tests/stages/runtime/test_goodput.py moves it)


def _samples(text, name):
    """Sample values of ``name`` (a histogram by its _count)."""
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    values = [float(line.rsplit(" ", 1)[1]) for line in lines if re.match(rf"{name}(_count)?[{{ ]", line)]
    return values


def test_documented_series_exist_and_move(default_server):
    url = default_server.url
    assert len(DOCUMENTED) >= 15
    chat = {"model": "omnistage-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
            "ignore_eos": True}
    assert httpx.post(f"{url}/v1/chat/completions", json={**chat, "stream": True}, timeout=60).status_code == 200
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    assert httpx.post(f"{url}/v1/chat/completions", json={**chat, "seed": -1}, timeout=60).status_code == 400
    assert httpx.post(f"{url}/v1/audio/speech", json={"model": "omnistage-tiny", "input": "hello", "voice": "alloy"},
                      timeout=60).status_code == 200
    text = httpx.get(f"{url}/metrics", timeout=60).text
    for name in DOCUMENTED:
        values = _samples(text, name)
        if name == "omnistage_stage_restarts_total":
            assert f"# TYPE {name} counter" in text
            continue
        assert values, f"{name} is documented but not exported"
        if name not in STILL:
            assert max(values) > 0, f"{name} did not move"
    assert 'omnistage_requests_total{endpoint="/v1/chat/completions",status="400"}' in text
    assert re.search(r'omnistage_request_success_total\{finished_reason="length",model="omnistage-tiny"\} [1-9]', text)
