"""Runs inside the vLLM venv (benchmarks/ar_vs_vllm.py builds it): vLLM's offline engine on a
workload given as JSON, timed as the omnistage side is timed. Prints one JSON line.

    python offline.py SPEC.json
"""
from __future__ import annotations

import json
import sys
import time


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    from vllm import LLM, SamplingParams
    llm = LLM(model=spec["model"], dtype=spec["dtype"], max_num_seqs=spec["max_batch"],
              max_model_len=spec["max_model_len"], enable_prefix_caching=False, seed=0,
              max_num_batched_tokens=spec["max_tokens_per_step"])
    params = SamplingParams(max_tokens=spec["new_tokens"], temperature=0, ignore_eos=True)
    warm = [{"prompt_token_ids": ids} for ids in spec["warmup"]]
    llm.generate(warm, params, use_tqdm=False)
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompts"]]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    total = time.perf_counter() - start
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    print("RESULT_JSON " + json.dumps({"seconds": total, "tokens": sum(map(len, tokens)), "ids": tokens}))


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
