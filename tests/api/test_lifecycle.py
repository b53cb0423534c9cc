"""`omnistage serve` as an operator runs it (a real subprocess): SIGTERM and Ctrl-C end it within
a bound with requests in flight and leave nothing behind; a burst past the queue limits gets 429s
at submit while every accepted request finishes, and memory stays bounded."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from omnistage.bench.client import Target
from omnistage.bench.datasets import random_prompts
from omnistage.bench.run import drive
from tests.conftest import ROOT

SHUTDOWN_BOUND_S = 30


def _leftovers():
    return {*Path("/dev/shm").glob("omnistage-*"), *Path(os.environ.get("TMPDIR", "/tmp")).glob("omnistage-*")}


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


class Served:
    def __init__(self, graph, *args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "omnistage.cli", "serve", str(graph), "--port",
                                      str(self.port), "--log-level", "warning", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise AssertionError(f"server did not come up: {self.proc.communicate()[1][-3000:]}")

    def stop(self, sig):
        workers = _children(self.proc.pid)
        assert workers, "the server has no worker processes"
        start = time.monotonic()
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=SHUTDOWN_BOUND_S)
        return time.monotonic() - start, workers, err


def _long_chat(url, results, streaming):
    body = {"model": "text-chat", "messages": [{"role": "user", "content": "go"}], "max_tokens": 100_000,
            "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(lines)
            streaming.release()  # once per client: its request is generating
            for _ in lines:
                pass
        results.append("ended")
    except httpx.HTTPError as exc:
        results.append(type(exc).__name__)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_server_in_bounded_time_leaving_nothing(sig):
    before = _leftovers()
    server = Served(ROOT / "examples" / "text_chat.yaml", "--shutdown-timeout", "2")
    results, streaming = [], threading.Semaphore(0)
    clients = [threading.Thread(target=_long_chat, args=(server.url, results, streaming)) for _ in range(3)]
    for c in clients:
        c.start()
    for _ in clients:  # every request is generating (endlessly, until aborted)
        assert streaming.acquire(timeout=60)
    took, workers, err = server.stop(sig)
    assert took < SHUTDOWN_BOUND_S
    assert server.proc.returncode in (0, 130, -signal.SIGTERM), err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    for c in clients:
        c.join(30)
    assert len(results) == 3  # every client got its answer or its connection closed: none hangs
    deadline = time.monotonic() + 10  # (multiprocessing's resource tracker leaves once it sees the server gone)
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [(pid, open(f"/proc/{pid}/cmdline").read()) for pid in workers if _alive(pid)]
    assert _leftovers() <= before


def test_a_burst_past_the_queue_limit_gets_429s_and_memory_stays_bounded(tmp_path):
    graph = tmp_path / "small_queue.yaml"
    graph.write_text((ROOT / "examples" / "text_chat.yaml").read_text()
                     .replace("batching: {max_batch: 16}", "batching: {max_batch: 4, queue_depth: 8}"))
    server = Served(graph)
    try:
        target = Target(server.url, "text-chat", {})

        def burst(n):
            outcomes, _ = asyncio.run(drive(target, "chat", random_prompts(n, 8, 16, seed=n)))
            refused = [o for o in outcomes if not o.ok]
            assert all(o.error.startswith("429:") for o in refused), {o.error for o in refused}
            assert all(1 <= o.output_tokens <= 16 for o in outcomes if o.ok)
            return len(outcomes) - len(refused), len(refused)

        ok1, refused1 = burst(24)
        assert ok1 >= 8 and refused1 >= 1
        rss1 = _rss_mib(server.proc.pid)
        ok10, refused10 = burst(240)
        assert ok10 >= 8 and refused10 >= 100
        rss10 = _rss_mib(server.proc.pid)
        assert rss10 - rss1 < 64, (rss1, rss10)  # docs/operations.md states this bound
        r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": "text-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert r.status_code == 200
    finally:
        server.stop(signal.SIGTERM)


def test_a_short_soak_of_mixed_requests_fails_none_and_memory_settles():
    """Chat (with and without images), images, speech and spoken chat at once, round after round:
    no request fails, and the API process's memory stops growing once warm."""
    from omnistage.bench.datasets import with_images
    from tests.conftest import tiny_default_graph
    server = Served(tiny_default_graph())
    try:
        target = Target(server.url, "omnistage-tiny", {})

        async def round_(seed):
            mixes = [("chat", random_prompts(12, 16, 8, seed=seed)),
                     ("chat", with_images(random_prompts(4, 8, 4, seed=seed), (64, 48), 1, seed)),
                     ("images", random_prompts(4, 6, 1, seed=seed)),
                     ("speech", random_prompts(4, 6, 1, seed=seed)),
                     ("spoken-chat", random_prompts(2, 6, 6, seed=seed))]
            runs = await asyncio.gather(*(drive(target, endpoint, samples) for endpoint, samples in mixes))
            return [o for outcomes, _ in runs for o in outcomes]

        rss = []
        for seed in range(4):
            outcomes = asyncio.run(round_(seed))
            assert all(o.ok for o in outcomes), {o.error for o in outcomes if not o.ok}
            rss.append(_rss_mib(server.proc.pid))
        assert rss[-1] - rss[1] < 32, rss  # after the first (warm-up) round, growth stays within noise
    finally:
        server.stop(signal.SIGTERM)
