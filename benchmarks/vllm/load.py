"""Runs inside the vLLM venv: vLLM's own load client (``vllm bench serve``) against a server given
by the arguments (any OpenAI-compatible one). Prints the summary as one JSON line.

    python load.py --base-url http://127.0.0.1:PORT --model M --tokenizer DIR ... (vllm bench serve flags)
"""
from __future__ import annotations

import json

KEYS = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
        "output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms",
        "mean_e2el_ms", "p99_e2el_ms")


def main() -> None:
    from vllm.benchmarks.serve import add_cli_args, main as bench
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    result = bench(parser.parse_args())
    print("RESULT_JSON " + json.dumps({k: result.get(k) for k in KEYS}))


if __name__ == "__main__":
    main()
