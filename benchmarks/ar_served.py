"""The served half of ``ar_vs_vllm.py``: omnistage's server and vLLM's OpenAI server, each started
on loopback with the same checkpoint and settings, driven in turn by the same load client
(vLLM's own ``vllm bench serve``, run from the vLLM venv) with the same random prompts."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

LOAD = Path(__file__).resolve().parent / "vllm" / "load.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _omnistage_server(path: Path, port: int, batch: int, max_len: int, kv_gib: int, step_tokens: int) -> list[str]:
    return [str(Path(sys.executable).parent / "omnistage"), "serve", str(path), "--port", str(port),
            "--dtype", "float32", "--max-num-seqs", str(batch), "--max-model-len", str(max_len),
            "--kv-cache-memory", f"{kv_gib}G", "--no-enable-prefix-caching",
            "--max-num-batched-tokens", str(step_tokens), "--log-level", "warning"]


def _vllm_server(python: Path, path: Path, port: int, batch: int, max_len: int, step_tokens: int) -> list[str]:
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--port", str(port),
            "--host", "127.0.0.1", "--dtype", "float32", "--max-num-seqs", str(batch), "--max-model-len",
            str(max_len), "--no-enable-prefix-caching", "--max-num-batched-tokens", str(step_tokens),
            "--disable-log-stats", "--uvicorn-log-level", "warning"]


def _wait_ready(port: int, server: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the server on port {port} was not ready in {timeout:.0f} s")


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _load(python: Path, path: Path, port: int, prompts: int, input_len: int, output_len: int) -> dict:
    args = [str(python), str(LOAD), "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}",
            "--endpoint", "/v1/completions", "--model", str(path), "--tokenizer", str(path),
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--num-prompts", str(prompts), "--request-rate", "inf", "--ignore-eos", "--num-warmups", "4",
            "--seed", "0", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "99", "--disable-tqdm"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT_JSON ")), None)
    if line is None:
        raise RuntimeError(f"the load client failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    result = json.loads(line[len("RESULT_JSON "):])
    if result["failed"] or result["completed"] != prompts:
        raise RuntimeError(f"{result['failed']} of {prompts} requests failed:\n{done.stdout[-3000:]}")
    return result


def served(server: str, python: Path, path: Path, prompts: int, input_len: int, output_len: int, max_len: int,
           kv_gib: int, step_tokens: int) -> dict:
    """Start ``server`` ("omnistage" or "vllm") on ``path``, drive it, stop it; the client's summary."""
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if server == "vllm":
        cmd = _vllm_server(python, path, port, prompts, max_len, step_tokens)
        env.update(VLLM_CPU_KVCACHE_SPACE=str(kv_gib), VLLM_TARGET_DEVICE="cpu")
    else:
        cmd = _omnistage_server(path, port, prompts, max_len, kv_gib, step_tokens)
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_ready(port, proc)
            return _load(python, path, port, prompts, input_len, output_len)
        except RuntimeError:
            _stop(proc)
            log.seek(0)
            sys.stderr.write(log.read()[-5000:])
            raise
        finally:
            if proc.poll() is None:
                _stop(proc)
