"""``omnistage serve`` answers while its stages load: /live at once, /health and /v1 with 503
"loading" (and Retry-After) until every stage is ready; a start that fails ends the server."""
import socket
import subprocess
import sys
import time

import httpx


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_says_loading_until_the_stages_are_ready():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "omnistage.cli", "serve", "tiny:qwen2", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, refused, deadline = [], None, time.time() + 180
    try:
        while time.time() < deadline:
            try:
                health = httpx.get(f"{url}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.append(health.json()["status"])
            if health.status_code == 200:
                break
            if refused is None:
                refused = httpx.post(f"{url}/v1/completions", json={"model": "tiny:qwen2", "prompt": "hi"})
                assert httpx.get(f"{url}/live").status_code == 200
            time.sleep(0.05)
        assert seen[0] == "loading" and seen[-1] == "ok", seen
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "loading"
        done = httpx.post(f"{url}/v1/completions", json={"model": "tiny:qwen2", "prompt": "hi", "max_tokens": 2})
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 2
    finally:
        server.terminate()
        _, log = server.communicate(timeout=60)
    assert "KV cache" in log and "ready after" in log, log[-2000:]
