"""Structured output's cost per decoded token, omnistage against vLLM, side by side.

SmolLM2-135M-Instruct (real weights, a 49k vocabulary), float32, 32 chat prompts at once, max
batch 32, greedy, 64 new tokens each, warm-up excluded, the same KV budget and step token budget
on both. Each engine runs the batch twice: free (eos ignored) and with every request held to a
JSON schema that cannot close within 64 tokens (so every request makes exactly 64 tokens in
both runs). Both use xgrammar with no whitespace (vLLM's ``disable_any_whitespace``), so both
should constrain to the same tokens. omnistage's grammar time is also read directly: the mask
fill on its worker thread, and what the step's own thread spends on the grammar (waiting for the
fill, which on a CPU whose cores the forward holds mostly runs after it, and applying the masks).
The overhead is (constrained seconds - free seconds) / tokens, in ms per decoded token, from the
median of ``--rounds`` alternating runs of each in one engine (the machine's run-to-run noise is
of the order of the overhead itself).

    python benchmarks/structured.py [--prompts 32] [--new 64] [--rounds 3] [--skip-vllm]

Ends with ``RESULT ours_ms=<overhead per token> vllm_ms=<overhead per token>
ours_tok_s=<constrained tokens/s> vllm_tok_s=...``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ar_vs_vllm import KV_GIB, STEP_TOKENS, run_vllm, token_ids, vllm_python  # noqa: E402

from omnistage.ar_engine.config import EngineConfig  # noqa: E402
from omnistage.ar_engine.engine import EngineRequest, LLMEngine  # noqa: E402
from omnistage.ar_engine.sampling import SamplingParams  # noqa: E402
from omnistage.checkpoints.packaged import ensure_packaged  # noqa: E402
from omnistage.stages.kinds.ar import load_model  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "words": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200}},
    "required": ["words"], "additionalProperties": False}
MAX_LEN = 1024


def run_omnistage(path: Path, prompts: list[list[int]], warmup: list[list[int]], new: int, rounds: int) -> dict:
    """Free and constrained runs of the batch, alternately, ``rounds`` of each, in one engine."""
    model = load_model(str(path), torch.float32, "cpu")
    tok = AutoTokenizer.from_pretrained(path)
    config = EngineConfig(kv_cache_mb=KV_GIB << 10, prefix_caching=False, max_tokens_per_step=STEP_TOKENS,
                          max_model_len=MAX_LEN)
    engine = LLMEngine(model, tok, config, max_seqs=len(prompts))
    settings = {"free": {"ignore_eos": True},
                "held": {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}}}

    def generate(batch: list[list[int]], name: str) -> list[list[int]]:
        for i, ids in enumerate(batch):
            engine.add(EngineRequest(f"r{i}", ids, SamplingParams.from_request(
                {"max_tokens": new, "temperature": 0, **settings[name]}, None)))
        out: dict[str, list[int]] = {}
        while engine.has_work():
            for step in engine.step():
                out.setdefault(step.rid, []).extend(step.tokens)
        return [out[f"r{i}"] for i in range(len(batch))]

    for name in settings:
        generate(warmup, name)
    grammar = _timed(engine.guides)
    runs: dict[str, list[dict]] = {"free": [], "held": [], "grammar": [grammar]}
    for _ in range(rounds):
        for name in settings:
            start = time.perf_counter()
            ids = generate(prompts, name)
            runs[name].append({"seconds": time.perf_counter() - start, "tokens": sum(map(len, ids)), "ids": ids})
    return runs


def _timed(guides: Any) -> dict[str, float]:
    """Wrap the engine's grammar calls to add up their seconds: ``fill`` (the masks, on the worker
    thread) and ``step`` (what the step's thread spends on the grammar: waiting for the fill and
    applying the masks)."""
    spent = {"fill": 0.0, "step": 0.0}
    start, apply = guides.start, guides.apply

    def fill(matchers: Any, bitmask: Any, rows: Any) -> None:
        t = time.perf_counter()
        guides.batch.batch_fill_next_token_bitmask(matchers, bitmask, rows)
        spent["fill"] += time.perf_counter() - t

    def timed_start(matchers: Any, rows: Any) -> Any:
        return guides.pool.submit(fill, list(matchers), guides.bitmask, list(rows))

    def timed_apply(*args: Any) -> None:
        t = time.perf_counter()
        apply(*args)
        spent["step"] += time.perf_counter() - t

    del start
    guides.start, guides.apply = timed_start, timed_apply
    return spent


def median(runs: list[dict]) -> float:
    return statistics.median(r["seconds"] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="free and constrained runs of each (the median is used)")
    ap.add_argument("--skip-vllm", action="store_true", help="omnistage only (no vLLM venv)")
    args = ap.parse_args()
    path = ensure_packaged("smollm2-135m-instruct")
    prompts = token_ids(path, args.prompts, 1, chat=True)
    warmup = token_ids(path, 4, 99, chat=True)
    engines = {"omnistage": run_omnistage(path, prompts, warmup, args.new, args.rounds)}
    if not args.skip_vllm:
        engines["vLLM"] = run_vllm(vllm_python(), path, prompts, warmup, args.new, args.prompts, MAX_LEN, SCHEMA,
                                   args.rounds)
    tokens = args.prompts * args.new
    print(f"\nSmolLM2-135M-Instruct, float32, {args.prompts} requests at once, {args.new} tokens each, greedy; "
          f"median of {args.rounds} runs each\n")
    print("| engine | free tok/s | JSON schema tok/s | overhead ms/token | free / constrained tokens equal to omnistage's |")
    print("|---|---:|---:|---:|---|")
    result = {}
    for engine, runs in engines.items():
        assert all(r["tokens"] == tokens for r in runs["free"] + runs["held"]), engine
        free, held = median(runs["free"]), median(runs["held"])
        overhead = (held - free) / tokens * 1e3
        same = "" if engine == "omnistage" else " / ".join(
            f"{sum(a == b for a, b in zip(runs[k][0]['ids'], engines['omnistage'][k][0]['ids']))}/{args.prompts}"
            for k in ("free", "held"))
        print(f"| {engine} | {tokens / free:.0f} | {tokens / held:.0f} | {overhead:.3f} | {same} |")
        key = "ours" if engine == "omnistage" else "vllm"
        result[f"{key}_ms"] = f"{overhead:.3f}"
        result[f"{key}_tok_s"] = f"{tokens / held:.0f}"
    spent = engines["omnistage"]["grammar"][0]
    made = tokens * args.rounds
    print(f"\nomnistage's grammar time per constrained token: mask fill {spent['fill'] / made * 1e3:.4f} ms on the "
          f"worker thread, {spent['step'] / made * 1e3:.4f} ms on the step's path (waiting for it, applying the masks)")
    result["ours_fill_ms"] = f"{spent['fill'] / made * 1e3:.4f}"
    result["ours_path_ms"] = f"{spent['step'] / made * 1e3:.4f}"
    tok = AutoTokenizer.from_pretrained(path)
    for engine, runs in engines.items():  # what a constrained answer looks like
        print(f"{engine}, first constrained answer: {tok.decode(runs['held'][0]['ids'][0])!r}")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
