"""Runs inside the vLLM venv (benchmarks/ar_vs_vllm.py builds it): vLLM's offline engine on a
workload given as JSON, timed as the omnistage side is timed. Prints one JSON line.

With ``json_schema`` in the spec (benchmarks/structured.py), the batch runs ``rounds`` times free
(eos ignored) and held to the schema (xgrammar, one space after ',' and ':'), alternately, in one
engine; each run's seconds are reported.

    python offline.py SPEC.json
"""
from __future__ import annotations

import json
import sys
import time


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    from vllm import LLM, SamplingParams
    schema = spec.get("json_schema")
    extra = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}} if schema else {}
    llm = LLM(model=spec["model"], dtype=spec["dtype"], max_num_seqs=spec["max_batch"],
              max_model_len=spec["max_model_len"], enable_prefix_caching=False, seed=0,
              max_num_batched_tokens=spec["max_tokens_per_step"], **extra)
    free = SamplingParams(max_tokens=spec["new_tokens"], temperature=0, ignore_eos=True)
    warm = [{"prompt_token_ids": ids} for ids in spec["warmup"]]
    prompts = [{"prompt_token_ids": ids} for ids in spec["prompts"]]

    def timed(params: SamplingParams) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start, [list(o.outputs[0].token_ids) for o in outputs]

    llm.generate(warm, free, use_tqdm=False)
    if schema is None:
        total, tokens = timed(free)
        print("RESULT_JSON " + json.dumps({"seconds": total, "tokens": sum(map(len, tokens)), "ids": tokens}))
        return
    from vllm.sampling_params import StructuredOutputsParams
    held = SamplingParams(max_tokens=spec["new_tokens"], temperature=0,
                          structured_outputs=StructuredOutputsParams(json=schema, disable_any_whitespace=True))
    llm.generate(warm, held, use_tqdm=False)
    runs: dict[str, list] = {"free": [], "held": []}
    for _ in range(spec.get("rounds", 1)):
        for name, params in (("free", free), ("held", held)):
            seconds, ids = timed(params)
            runs[name].append({"seconds": seconds, "tokens": sum(map(len, ids)), "ids": ids})
    print("RESULT_JSON " + json.dumps(runs))


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
