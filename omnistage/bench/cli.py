"""The ``omnistage bench`` command line."""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from omnistage.bench.client import ENDPOINTS, Target
from omnistage.bench.datasets import file_prompts, random_prompts, with_images
from omnistage.bench.run import drive, summarize, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server (without /v1)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="chat")
    p.add_argument("--model", default=None, help="default: the first model the server lists")
    p.add_argument("--dataset", choices=["random", "file"], default="random")
    p.add_argument("--dataset-path", type=Path, help="--dataset file: one prompt per line, or JSON lines with 'prompt'")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=32, help="random prompts: words per prompt")
    p.add_argument("--output-len", type=int, default=32, help="max_tokens of each chat request")
    p.add_argument("--range-ratio", type=float, default=0.0, help="random lengths vary by +- this fraction")
    p.add_argument("--image-size", default=None, help="WxH: add random images of this size to chat requests")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--request-rate", type=float, default=float("inf"), help="Poisson arrivals per second (inf: all at once)")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="requests sent (and not counted) first")
    p.add_argument("--percentiles", default="50,90,99")
    p.add_argument("--goodput", nargs="+", default=None, metavar="METRIC:MS",
                   help="SLOs for request_goodput, e.g. ttft:500 e2el:3000 (ttft, tpot, e2el, ttfp)")
    p.add_argument("--save-result", type=Path, default=None, help="write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model or httpx.get(f"{args.base_url}/v1/models", headers=headers, timeout=30).json()["data"][0]["id"]
    target = Target(args.base_url.rstrip("/"), model, headers)
    if args.dataset == "file":
        if args.dataset_path is None:
            raise SystemExit("--dataset file needs --dataset-path")
        samples = file_prompts(args.dataset_path, args.num_prompts + args.warmup, args.output_len)
    else:
        samples = random_prompts(args.num_prompts + args.warmup, args.input_len, args.output_len, args.seed,
                                 args.range_ratio)
    if args.image_size:
        width, _, height = args.image_size.partition("x")
        samples = with_images(samples, (int(width), int(height)), args.images_per_request, args.seed)
    warm, measured = samples[:args.warmup], samples[args.warmup:]
    if warm:
        asyncio.run(drive(target, args.endpoint, warm, max_concurrency=args.max_concurrency))
    outcomes, duration = asyncio.run(drive(target, args.endpoint, measured, args.request_rate, args.max_concurrency,
                                           args.seed))
    percentiles = [float(p) for p in args.percentiles.split(",")]
    result: dict[str, Any] = summarize(outcomes, duration, percentiles, _slos(args.goodput))
    result.update(endpoint=args.endpoint, model=model, num_prompts=args.num_prompts, request_rate=args.request_rate,
                  max_concurrency=args.max_concurrency)
    print(table(result, args.endpoint))
    if args.save_result is not None:
        args.save_result.write_text(json.dumps(result, indent=2))
    return 0 if result["completed"] else 1


def _slos(pairs: list[str] | None) -> dict[str, float] | None:
    if not pairs:
        return None
    slos = {}
    for pair in pairs:
        name, _, ms = pair.partition(":")
        if name not in ("ttft", "tpot", "e2el", "ttfp") or not ms:
            raise SystemExit(f"--goodput takes METRIC:MS with METRIC one of ttft, tpot, e2el, ttfp; got {pair!r}")
        slos[name] = float(ms)
    return slos
