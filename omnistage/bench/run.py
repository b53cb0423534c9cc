"""Driving a server: arrivals (a Poisson rate, or all at once) under a concurrency cap, then the
summary, with vLLM's ``vllm bench serve`` metric names where they overlap (``mean_ttft_ms``,
``p99_itl_ms``, ``request_goodput``, ...)."""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import httpx

from omnistage.bench.client import ENDPOINTS, Outcome, Target
from omnistage.bench.datasets import Sample

METRICS = ("ttft", "tpot", "itl", "e2el", "ttfp", "rtf")  # reported in ms, except rtf (a ratio)


async def drive(target: Target, endpoint: str, samples: Sequence[Sample], request_rate: float = float("inf"),
                max_concurrency: int | None = None, seed: int = 0, timeout_s: float = 600) -> tuple[list[Outcome], float]:
    """Send every sample; arrivals are Poisson at ``request_rate`` per second (inf: all at once),
    at most ``max_concurrency`` in flight. Returns the outcomes and the run's duration in seconds."""
    send = ENDPOINTS[endpoint]
    rng = random.Random(seed)
    limit = asyncio.Semaphore(max_concurrency or len(samples) or 1)
    limits = httpx.Limits(max_connections=max_concurrency or None, max_keepalive_connections=max_concurrency or None)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        async def one(sample: Sample) -> Outcome:
            async with limit:
                try:
                    return await asyncio.wait_for(send(client, target, sample), timeout_s)
                except (httpx.HTTPError, asyncio.TimeoutError, ValueError, KeyError) as exc:
                    # (a transport failure, a request past the deadline, an answer not in the expected shape)
                    return Outcome(error=f"{type(exc).__name__}: {exc}")

        start = time.perf_counter()
        tasks = []
        for sample in samples:
            tasks.append(asyncio.create_task(one(sample)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        outcomes = await asyncio.gather(*tasks)
        return list(outcomes), time.perf_counter() - start


def summarize(outcomes: Sequence[Outcome], duration: float, percentiles: Sequence[float] = (50, 90, 99),
              goodput: dict[str, float] | None = None) -> dict[str, Any]:
    """The run in numbers. ``goodput``: metric -> SLO in ms (``ttft``, ``tpot``, ``e2el``, ``ttfp``);
    a request counts towards ``request_goodput`` when it succeeded within all of them."""
    done = [o for o in outcomes if o.ok]
    out_tokens = sum(o.output_tokens for o in done)
    in_tokens = sum(o.prompt_tokens for o in done)
    result: dict[str, Any] = {
        "completed": len(done), "failed": len(outcomes) - len(done), "duration": duration,
        "total_input_tokens": in_tokens, "total_output_tokens": out_tokens,
        "request_throughput": len(done) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
        "total_token_throughput": (in_tokens + out_tokens) / duration if duration else 0.0,
        "errors": sorted({o.error for o in outcomes if not o.ok})[:5],
    }
    for name in METRICS:
        values = _values(done, name)
        scale = 1.0 if name == "rtf" else 1000.0
        unit = "" if name == "rtf" else "_ms"
        result[f"mean_{name}{unit}"] = statistics.fmean(values) * scale if values else None
        result[f"median_{name}{unit}"] = statistics.median(values) * scale if values else None
        result[f"std_{name}{unit}"] = statistics.pstdev(values) * scale if values else None
        for p in percentiles:
            result[f"p{p:g}_{name}{unit}"] = _percentile(values, p) * scale if values else None
    if goodput:
        good = [o for o in done if all((v := _one(o, m)) is not None and v * 1000 <= slo for m, slo in goodput.items())]
        result["request_goodput"] = len(good) / duration if duration else 0.0
    return result


def _one(o: Outcome, name: str) -> float | None:
    return {"ttft": o.ttft, "tpot": o.tpot, "e2el": o.e2e, "ttfp": o.ttfp, "rtf": o.rtf}.get(name)


def _values(done: Sequence[Outcome], name: str) -> list[float]:
    if name == "itl":
        return [gap for o in done for gap in o.itl]
    return [v for o in done if (v := _one(o, name)) is not None]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def table(result: dict[str, Any], endpoint: str) -> str:
    """The summary as a text table (metrics with no values left out)."""
    lines = [f"{' omnistage bench: ' + endpoint + ' ':=^60}"]
    for key in ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput",
                "output_throughput", "request_goodput"):
        if key in result:
            value = result[key]
            lines.append(f"{key:<44}{value:>16.2f}" if isinstance(value, float) else f"{key:<44}{value:>16}")
    for name in METRICS:
        rows = [(k, v) for k, v in result.items() if k.endswith((f"_{name}_ms", f"_{name}")) and v is not None]
        if rows:
            lines.append(f"{' ' + name.upper() + ' ':-^60}")
            lines += [f"{k:<44}{v:>16.2f}" for k, v in rows]
    for error in result["errors"]:
        lines.append(f"error: {error}")
    lines.append("=" * 60)
    return "\n".join(lines)
