"""Step caching and cost-aware admission, measured side by side (run by ``diffusion.py``).

Step caching: the same burst of requests (distinct prompts and seeds, steps drawn from
10/20/30/40, guidance 7.5) through a ``diffusion`` stage with caching off and with the ``reuse``
policy at the family's default threshold and at twice it, beside diffusers one at a time and
with static batches of the same max batch (all returning float pixels: no PNG on either side).
PSNR compares each image with the same request uncached. On the tiny random-weight models these
figures show the mechanism, not a real model's quality. Both models run at 32x32, the size
they share, where a step's time grows with its rows as a real model's does; the tiny SD also
runs at its native 16x16, where a step costs about the same at any width (per-call overhead):
there a skipped row saves little, because the number of model calls is set by the longest
request, not by the rows.

Cost-aware admission: a burst of three sizes interleaved, through the stage with a fixed
max_batch, with a compute budget equal to the fixed policy's costliest step (max_batch guided
requests at the largest size: no step costs more than under the fixed policy, but small
requests fill a step wider), and with the default, widths measured per size on this machine;
the makespan of each (warm-up at every size on every side).
"""
from __future__ import annotations

import math

import numpy as np
from diffusers import DiffusionPipeline

from diffusion import run_diffusers, run_omnistage, workload
from omnistage.diffusion.families import CACHE_THRESHOLDS
from omnistage.diffusion.registry import family_class
from omnistage.models.tiny import ensure_tiny

CACHE_RUNS = (("sd", 16), ("sd", 32), ("sd3", 32))  # (model, side): SD's native size, then the shared one
SHARED_SIDE = 32  # the side cache_speedup is taken at
MIXED_SIZES = (16, 32, 48)
REPEATS = 3


def psnr(a, b) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)  # (pixels in [0, 1])


def _pixels(run: dict) -> list:
    return [out["image"]["data"].numpy() for out in run["outputs"]]


def _row(name: str, run: dict, base: float, psnr_db: float | None = None) -> str:
    skipped = f"{sum(run['skipped']) / len(run['skipped']):.1f}" if "skipped" in run else "-"
    quality = "-" if psnr_db is None else ("inf" if math.isinf(psnr_db) else f"{psnr_db:.1f}")
    return (f"| {name} | {run['img_s']:.2f} | {run['img_s'] / base:.2f} | {run['mean']:.2f} | {skipped} | "
            f"{quality} |")


def cache_runs(n: int, batch: int) -> dict[str, float]:
    """Per model and side, a table; returns the smallest on/off images/s at the default
    threshold at the shared side (speedup; at every side in ``speedups``) and the smallest PSNR
    of any cached image (psnr_db)."""
    speedups, worst = {}, math.inf
    for model, size in CACHE_RUNS:
        path = ensure_tiny(model)
        pipe = DiffusionPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        default = CACHE_THRESHOLDS[family_class(str(path)).prediction]
        reqs, warm = workload(n, 0.0), workload(2, 0.0, seed=1)
        raw = {"output_format": "raw"}
        off = run_omnistage(path, size, reqs, warm, batch, extra={**raw, "cache": {"policy": "off"}})
        one = run_diffusers(pipe, size, reqs, warm, 1, output_type="np")
        rows = [_row("omnistage, cache off", off, one["img_s"])]
        for threshold in (default, 2 * default):
            on = run_omnistage(path, size, reqs, warm, batch,
                               extra={**raw, "cache": {"policy": "reuse", "threshold": threshold}})
            low = min(psnr(a, b) for a, b in zip(_pixels(on), _pixels(off)))
            rows.append(_row(f"omnistage, cache reuse {threshold:g}", on, one["img_s"], low))
            worst = min(worst, low)
            if threshold == default:
                speedups[f"{model}_{size}"] = on["img_s"] / off["img_s"]
        static = run_diffusers(pipe, size, reqs, warm, batch, output_type="np")
        rows += [_row("diffusers, one at a time", one, one["img_s"]),
                 _row(f"diffusers, static batch <= {batch}", static, one["img_s"])]
        print(f"\ntiny {model}, {n} images {size}x{size} at once, step caching (random weights: the mechanism, "
              "not a real model's quality)")
        print("| system | images/s | x one-at-a-time | mean latency s | steps skipped (mean) | PSNR dB (min) |")
        print("|---|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
    shared = min(v for k, v in speedups.items() if k.endswith(f"_{SHARED_SIDE}"))
    print("\ncache on/off images/s at the default threshold: "
          + ", ".join(f"{k.replace('_', ' ')}x{k.split('_')[1]} {v:.2f}" for k, v in speedups.items()))
    return {"speedup": shared, "psnr_db": worst, "speedups": speedups}


def mixed_shapes(quick: bool) -> float:
    """Makespan under the default admission (widths measured per size) over makespan with a
    fixed max_batch; the explicit compute budget beside them. Each policy runs ``REPEATS`` times,
    alternating, and keeps its median (a run's makespan varies by a few percent here)."""
    path = ensure_tiny("sd")
    n, batch = (24, 4) if quick else (48, 8)
    reqs, warm = workload(n, 0.0, seed=2), workload(2, 0.0, seed=1)
    sides = [MIXED_SIZES[i % len(MIXED_SIZES)] for i in range(n)]
    budget = 2 * batch * (MIXED_SIZES[-1] / MIXED_SIZES[0]) ** 2  # (rows at the 16x16 default size)
    policies = {"fixed max_batch": 0, f"compute budget ({budget:g} rows at 16x16)": budget,
                "measured widths (default, `auto`)": "auto"}
    runs: dict[str, list[dict]] = {name: [] for name in policies}
    for _ in range(1 if quick else REPEATS):
        for name, step_budget in policies.items():
            runs[name].append(run_omnistage(path, 16, reqs, warm, batch, budget=step_budget, sides=sides))
    median = {name: sorted(done, key=lambda r: r["img_s"])[len(done) // 2] for name, done in runs.items()}
    print(f"\ntiny sd, {n} images at once, sides {'/'.join(map(str, MIXED_SIZES))} interleaved, max_batch {batch}"
          f" (median of {len(runs['fixed max_batch'])} runs)")
    print("| admission | makespan s | images/s | mean latency s | p99 latency s |")
    print("|---|---:|---:|---:|---:|")
    for name, run in median.items():
        print(f"| {name} | {n / run['img_s']:.2f} | {run['img_s']:.2f} | {run['mean']:.2f} | {run['p99']:.2f} |")
    fixed, _, measured = median.values()
    return fixed["img_s"] / measured["img_s"]
