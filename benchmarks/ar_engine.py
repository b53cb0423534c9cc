"""AR engine throughput and latency: omnistage against HF generate, same model and workload.

Workload: N prompts of mixed length, each generating exactly M new tokens (greedy; eos is
ignored on every side so all do the same work), all arriving at once.
  * omnistage: the text_chat graph served by a real stage worker (paged KV, continuous batching)
  * HF one-at-a-time: model.generate per request, in arrival order (what a user does without us)
  * HF static batches: left-padded model.generate over consecutive groups of MAX_BATCH (the
    stage's max_batch), so both sides may batch as many requests
Latency is from arrival (t=0) to the request's last token. Then prefix caching: time to first
token of a request whose long prefix is cached, against one whose prefix is new. Then
interactive use: requests one at a time, 50 ms apart, time to first token on both sides (HF:
``generate`` of one new token, in-process).
Run for the tiny checkpoint and a ~100M-parameter Qwen2 config (random weights, same tokenizer).

    python benchmarks/ar_engine.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from omnistage import Pipeline
from omnistage.models.catalog import cache_root
from omnistage.models.tiny import ensure_tiny

MAX_BATCH = 64  # the stage's max_batch, and the static baseline's batch
GRAPH = """
name: bench-ar
models:
  lm: {{path: "{path}"}}
stages:
  llm:
    kind: ar
    model: lm
    inputs: {{prompt: request.prompt}}
    outputs: {{text: response.text}}
    batching: {{max_batch: {max_batch}}}
    options: {{max_tokens_per_step: 2048, kv_cache_mb: 1024}}
"""


def random_qwen2(name: str, **dims: int) -> Path:
    """A Qwen2 of the given dimensions (random weights, seed 0) with the tiny tokenizer, saved once."""
    out = cache_root() / name
    if not (out / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(ensure_tiny("qwen2"))
        config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **dims)
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(out)
        tok.save_pretrained(out)
    return out


def medium_model() -> Path:
    """A ~100M-parameter Qwen2."""
    return random_qwen2("bench-qwen2-100m", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_key_value_heads=4)


def workload(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while red green blue birds sing".split()
    prompts = []
    for _ in range(n):
        length = rng.choice([8, 16, 32, 64, 128, 256])
        prompts.append(" ".join(rng.choice(words) for _ in range(length)))
    return prompts


def summarize(name: str, latencies: list[float], total_s: float, tokens: int) -> dict:
    lat = sorted(latencies)
    return {"name": name, "tok_s": tokens / total_s, "mean": statistics.mean(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "total": total_s}


def run_omnistage(path: Path, prompts: list[str], new: int, warmup: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "graph.yaml"
        graph.write_text(GRAPH.format(path=path, max_batch=MAX_BATCH))
        with Pipeline.from_yaml(graph) as pipe:
            params = dict(temperature=0, max_tokens=new, ignore_eos=True)
            # Warm-up with other prompts: the measured ones must not hit the prefix cache.
            [h.result(600) for h in [pipe.submit(prompt=p, **params) for p in warmup]]
            start = time.perf_counter()
            handles = [pipe.submit(prompt=p, **params) for p in prompts]
            tokens = sum(handle.result(600).usage["completion_tokens"] for handle in handles)
            total = time.perf_counter() - start
            latencies = [handle.finished_at - start for handle in handles]
            ttft = prefix_ttft(pipe, new)

            def first(prompt: str) -> None:
                next(iter(pipe.stream(prompt=prompt, temperature=0, max_tokens=1, ignore_eos=True)))
            ttft["idle_ttft"] = one_at_a_time(first, workload(IDLE_REQUESTS, seed=2))
    return summarize("omnistage", latencies, total, tokens) | ttft


IDLE_REQUESTS, IDLE_GAP_S = 40, 0.05


def one_at_a_time(first_token, prompts: list[str]) -> list[float]:
    """Seconds to each prompt's first token, sent one at a time IDLE_GAP_S apart, sorted."""
    first_token(prompts[0])  # warm-up
    times = []
    for prompt in prompts:
        time.sleep(IDLE_GAP_S)
        start = time.perf_counter()
        first_token(prompt)
        times.append(time.perf_counter() - start)
    return sorted(times)


def hf_idle_ttft(path: Path) -> list[float]:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()

    def first(prompt: str) -> None:
        with torch.inference_mode():
            model.generate(**tok(prompt, return_tensors="pt"), max_new_tokens=1, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    return one_at_a_time(first, workload(IDLE_REQUESTS, seed=2))


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def prefix_ttft(pipe: Pipeline, new: int, prefix_words: int = 512, trials: int = 5) -> dict:
    """TTFT with a cached 512-token prefix vs a fresh prefix of the same length."""
    rng = random.Random(1)
    vocab = "alpha beta gamma delta omega red green blue one two three four five six seven".split()

    def ttft(prompt: str) -> float:
        start = time.perf_counter()
        next(iter(pipe.stream(prompt=prompt, temperature=0, max_tokens=2, ignore_eos=True)))
        return time.perf_counter() - start

    shared = " ".join(rng.choice(vocab) for _ in range(prefix_words))
    ttft(shared + " warm")
    cached = [ttft(shared + f" question {i}") for i in range(trials)]
    fresh = [ttft(" ".join(rng.choice(vocab) for _ in range(prefix_words)) + f" question {i}") for i in range(trials)]
    return {"ttft_cached": statistics.median(cached), "ttft_fresh": statistics.median(fresh)}


def run_hf(path: Path, prompts: list[str], new: int, batch: int, warmup: list[str]) -> dict:
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)

    def generate(group: list[str]) -> int:
        enc = tok(group, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        return (out.shape[1] - enc["input_ids"].shape[1]) * len(group)

    generate(warmup[:batch])
    start = time.perf_counter()
    latencies, tokens = [], 0
    for i in range(0, len(prompts), batch):
        group = prompts[i:i + batch]
        tokens += generate(group)
        latencies += [time.perf_counter() - start] * len(group)
    name = "HF generate, one at a time" if batch == 1 else f"HF generate, static batch {batch}"
    return summarize(name, latencies, time.perf_counter() - start, tokens)


def table(model_name: str, rows: list[dict]) -> None:
    base = rows[1]["tok_s"]
    print(f"\n{model_name}")
    print(f"{'system':32s} | {'tokens/s':>9s} | {'x one-at-a-time':>15s} | {'mean lat s':>10s} | {'p99 lat s':>9s}")
    print("-" * 88)
    for r in rows:
        print(f"{r['name']:32s} | {r['tok_s']:9.1f} | {r['tok_s'] / base:15.2f} | {r['mean']:10.2f} | {r['p99']:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    models = [("tiny Qwen2 (2 layers, 64 hidden)", ensure_tiny("qwen2"), 64, 128),
              ("Qwen2 ~100M (12 layers, 768 hidden)", medium_model(), 32, 64)]
    if args.quick:
        models = [(n, p, 8, 16) for n, p, _, _ in models[:1]]
    results = {}
    for name, path, n, new in models:
        prompts, warmup = workload(n, seed=0), workload(8, seed=1)
        ours = run_omnistage(path, prompts, new, warmup)
        rows = [ours, run_hf(path, prompts, new, 1, warmup), run_hf(path, prompts, new, min(MAX_BATCH, n), warmup)]
        table(f"{name}: {n} prompts of 8-256 words, {new} new tokens each", rows)
        print(f"prefix cache TTFT (512-word shared prefix): cached {ours['ttft_cached'] * 1000:.1f} ms, "
              f"fresh {ours['ttft_fresh'] * 1000:.1f} ms")
        ours["hf_idle_ttft"] = hf_idle_ttft(path)
        print(f"one at a time, {IDLE_GAP_S * 1000:.0f} ms apart ({IDLE_REQUESTS} prompts of 8-256 words), TTFT p50/p90: "
              f"omnistage {percentile(ours['idle_ttft'], 0.5) * 1000:.1f}/{percentile(ours['idle_ttft'], 0.9) * 1000:.1f} ms, "
              f"HF generate {percentile(ours['hf_idle_ttft'], 0.5) * 1000:.1f}/"
              f"{percentile(ours['hf_idle_ttft'], 0.9) * 1000:.1f} ms")
        results[name] = rows
    rows, *medium = results.values()

    def prefix_ratio(model_rows: list[dict]) -> str:
        return f"{model_rows[0]['ttft_cached'] / model_rows[0]['ttft_fresh']:.3f}"

    def idle_ratio(model_rows: list[dict]) -> str:
        ours = model_rows[0]
        return f"{percentile(ours['idle_ttft'], 0.5) / percentile(ours['hf_idle_ttft'], 0.5):.2f}"
    # The ~100M model's prefix ratio too: on the tiny one, a cached request's fixed costs (tokenizing
    # the prompt, one step's LM-head read, the hop to the worker) weigh against a cheap prefill.
    extra = f" prefix_ttft_ratio_100m={prefix_ratio(medium[0])} idle_ttft_ratio_100m={idle_ratio(medium[0])}" if medium else ""
    print(f"RESULT speedup={rows[0]['tok_s'] / rows[1]['tok_s']:.2f} static_ratio={rows[0]['tok_s'] / rows[2]['tok_s']:.2f} "
          f"prefix_ttft_ratio={prefix_ratio(rows)} idle_ttft_ratio={idle_ratio(rows)}{extra}")


if __name__ == "__main__":
    main()
