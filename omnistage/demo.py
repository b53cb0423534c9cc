"""``omnistage demo``: serve the default graph, drive it with ``examples/client.py``, stop.

The server is a real ``omnistage serve`` process on a free loopback port; the client is the
example script using the official ``openai`` package. Tiny models are built first, with a
progress line per model (``checkpoints.prepare``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from omnistage.checkpoints import resolve_model
from omnistage.checkpoints.prepare import prepare_models
from omnistage.graph.compile import compile_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if json.load(response).get("status") == "ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not become healthy within {timeout:.0f} s")


def _weights(graph: Path) -> str:
    """Which of the graph's models have real weights, which are random (their output is noise)."""
    plan = compile_file(graph, resolve_model)
    real = sorted({f"{name} ({st.model_path})" for name, st in plan.stages.items()
                   if st.model_path and not st.model_path.startswith("tiny:")})
    tiny = sorted(name for name, st in plan.stages.items() if st.model_path and st.model_path.startswith("tiny:"))
    return (f"real weights: {', '.join(real) or 'none'}\n"
            f"random weights (tiny test models, output is noise): {', '.join(tiny) or 'none'}")


def run_demo(graph: Path, client: Path, out: Path, timeout: float = 600) -> int:
    if not client.exists():
        raise FileNotFoundError(f"{client} not found: the demo runs from a checkout of the repository")
    import importlib.util
    if importlib.util.find_spec("openai") is None:
        raise ModuleNotFoundError("the demo's client uses the openai package: pip install openai")
    prepare_models(compile_file(graph, resolve_model))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"starting omnistage serve {graph.name} on {url}", flush=True)
    env = dict(os.environ)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the demo's terminal to what it does
    server = subprocess.Popen([sys.executable, "-m", "omnistage.cli", "serve", str(graph), "--port", str(port),
                               "--log-level", "warning"], env=env)
    try:
        _wait_healthy(url, server, timeout)
        print(f"server ready; running {client.name}", flush=True)
        print(f"{_weights(graph)}\n", flush=True)
        return subprocess.run([sys.executable, str(client), "--base-url", f"{url}/v1", "--out", str(out)],
                              check=False).returncode
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown stops every worker
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        print("server stopped", flush=True)
