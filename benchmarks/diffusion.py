"""Diffusion throughput and latency: omnistage against the diffusers pipeline, same model and work.

Workload: N text-to-image requests with distinct prompts and seeds, guidance 7.5, step counts
drawn from {10, 20, 30, 40} (mixed), at one resolution.
  * omnistage: a ``diffusion`` stage in a real worker process (step-level batching; requests
    join and leave between denoising steps), PNG-encoded results
  * diffusers one-at-a-time: ``pipe(prompt, ...)`` per request in arrival order (what a user
    does without us)
  * diffusers static batch: up to the stage's max_batch waiting requests per call (both sides may
    batch as many); one call takes one step count,
    so each call batches the waiting requests that share the oldest one's step count (the best a
    user can do with the pipeline's own batching)
Two arrival patterns: a burst (all at t=0) and staggered arrivals (a fixed gap). Latency runs
from a request's arrival to its image. Warm-up requests run first on every side. These runs
keep the stage at a fixed max_batch (``step_budget: 0``), the batch the static side gets.

Then (``diffusion_cache.py``), on the tiny SD and SD3: step caching off and on at two
thresholds in the same burst, beside diffusers, with each image's PSNR against the same request
uncached; and a burst of three sizes interleaved, under the compute budget against the fixed
max_batch (makespan).

    python benchmarks/diffusion.py [--quick] [--model sd|sdxl|sd3|flux|qwen-image]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from omnistage import Pipeline
from omnistage.models.tiny import ensure_tiny

GRAPH = """
name: bench-diffusion
models:
  m: {{path: "{path}"}}
stages:
  generate:
    kind: diffusion
    model: m
    inputs: {{prompt: request.prompt}}
    outputs: {{image: response.image}}
    resources: {{device: "{device}"}}
    batching: {{max_batch: {batch}, queue_depth: 1024}}
    options: {{step_budget: {budget}}}
"""
STEPS = (10, 20, 30, 40)
GUIDANCE = 7.5


@dataclass(frozen=True)
class Req:
    prompt: str
    seed: int
    steps: int
    arrival: float  # seconds after the start


def workload(n: int, gap: float, seed: int = 0) -> list[Req]:
    rng = random.Random(seed)
    words = "a red cat blue dog green bird on a hill under the sun in the rain at night".split()
    # Short enough for the tiny CLIP's 16-token window: no prompt is truncated.
    return [Req(" ".join(rng.choice(words) for _ in range(3)) + f" {i}", 1000 + i, rng.choice(STEPS), i * gap)
            for i in range(n)]


def summarize(name: str, latencies: list[float], total: float) -> dict:
    lat = sorted(latencies)
    return {"name": name, "img_s": len(lat) / total, "mean": statistics.mean(lat),
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


def run_omnistage(path: Path, size: int, reqs: list[Req], warm: list[Req], batch: int, device: str = "cpu",
                  budget: float | str = 0, extra: dict | None = None, sides: list[int] | None = None) -> dict:
    """``budget``: the stage's step_budget (0: a fixed max_batch; "auto": measured widths; warm-up
    runs at every size, so the widths are measured before the timed run); ``extra``: more request
    parameters (cache); ``sides``: each request's side (default ``size``). The result has each
    request's output under "outputs"."""
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "graph.yaml"
        graph.write_text(GRAPH.format(path=path, batch=batch, device=device, budget=budget))
        with Pipeline.from_yaml(graph) as pipe:
            def submit(r: Req, side: int = size):
                return pipe.submit(prompt=r.prompt, seed=r.seed, num_inference_steps=r.steps, guidance_scale=GUIDANCE,
                                   height=side, width=side, **(extra or {}))
            [submit(r, side).result(600) for side in sorted(set(sides or [size])) for r in warm]  # (every size)
            handles: list = [None] * len(reqs)
            start = time.perf_counter()

            def feed() -> None:
                for i, r in enumerate(reqs):
                    time.sleep(max(0.0, start + r.arrival - time.perf_counter()))
                    handles[i] = submit(r, sides[i] if sides else size)
            feeder = threading.Thread(target=feed)
            feeder.start()
            feeder.join()
            results = [h.result(600) for h in handles]
            latencies = [h.finished_at - (start + r.arrival) for h, r in zip(handles, reqs)]
            total = max(h.finished_at for h in handles) - start
    return {**summarize("omnistage", latencies, total), "outputs": [r.outputs for r in results],
            "skipped": [r.meta.get("generate", {}).get("skipped_steps", 0) for r in results]}


def run_diffusers(pipe: DiffusionPipeline, size: int, reqs: list[Req], warm: list[Req], batch: int,
                  output_type: str = "pil") -> dict:
    def call(group: list[Req]) -> None:
        pipe([r.prompt for r in group], num_inference_steps=group[0].steps, guidance_scale=GUIDANCE, height=size,
             width=size, generator=[torch.Generator().manual_seed(r.seed) for r in group], output_type=output_type)
    for r in warm:
        call([r])
    start = time.perf_counter()
    pending, latencies = list(reqs), []
    while pending:
        now = time.perf_counter() - start
        if pending[0].arrival > now:
            time.sleep(pending[0].arrival - now)
            continue
        arrived = [r for r in pending if r.arrival <= now]
        group = [r for r in arrived if r.steps == arrived[0].steps][:batch]
        call(group)
        done = time.perf_counter() - start
        latencies += [done - r.arrival for r in group]
        pending = [r for r in pending if r not in group]
    name = "diffusers, one at a time" if batch == 1 else f"diffusers, static batch <= {batch}"
    return summarize(name, latencies, time.perf_counter() - start)


def table(title: str, rows: list[dict]) -> None:
    base = rows[1]["img_s"]
    print(f"\n{title}")
    print(f"{'system':32s} | {'images/s':>8s} | {'x one-at-a-time':>15s} | {'mean lat s':>10s} | {'p99 lat s':>9s}")
    print("-" * 87)
    for r in rows:
        print(f"{r['name']:32s} | {r['img_s']:8.2f} | {r['img_s'] / base:15.2f} | {r['mean']:10.2f} | {r['p99']:9.2f}")


def scenario(path: Path, pipe: DiffusionPipeline, size: int, n: int, gap: float, batch: int) -> list[dict]:
    reqs, warm = workload(n, gap), workload(2, 0.0, seed=1)
    return [run_omnistage(path, size, reqs, warm, batch), run_diffusers(pipe, size, reqs, warm, 1),
            run_diffusers(pipe, size, reqs, warm, batch)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--model", default="sd", choices=["sd", "sdxl", "sd3", "flux", "qwen-image"])
    parser.add_argument("--size", type=int, default=16, help="image side (16: the tiny checkpoints' native size)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    n, batch = (8, 8) if args.quick else (32, 32)
    path = ensure_tiny(args.model)
    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    what = f"tiny {args.model}, {n} images {args.size}x{args.size}, steps in {STEPS}, guidance {GUIDANCE}"
    burst = scenario(path, pipe, args.size, n, 0.0, batch)
    table(f"{what}, all arriving at once", burst)
    # Requests arrive 4x faster than the plain pipeline serves them one at a time, spread out
    # instead of in one burst: batches must be formed from whatever has arrived.
    gap = 1.0 / burst[1]["img_s"] / 4
    staggered = scenario(path, pipe, args.size, n, gap, batch)
    table(f"{what}, one arriving every {gap * 1000:.0f} ms", staggered)
    from diffusion_cache import cache_runs, mixed_shapes
    cache = cache_runs(n, batch)
    mixed = mixed_shapes(args.quick)
    print(f"RESULT speedup={burst[0]['img_s'] / burst[1]['img_s']:.2f} "
          f"static_ratio={staggered[0]['img_s'] / staggered[2]['img_s']:.2f} "
          f"cache_speedup={cache['speedup']:.2f} psnr_db={cache['psnr_db']:.1f} "
          f"mixed_makespan_ratio={mixed:.2f}")


if __name__ == "__main__":
    main()
