"""Elastic allocation against the best static split, simulated on clusters of 8 to 64 devices.

Two stages share the devices: chat (an AR stage) and image generation (a diffusion stage). Their
service-time models come from step times measured on this machine (``benchmarks/ar_engine.py``,
``benchmarks/diffusion.py``: tiny Qwen2 decode and tiny SD at 16x16). The trace keeps ~80% of
the devices busy at each phase's best split while the demand shifts: chat needs 80% of the
devices, then 20%, then 50%; a 3x burst lasts 2 s every 20 s. The same trace runs on
  * elastic: starts from the even split; the controller (omnistage.elastic.policy) moves devices
  * every static split (each stage at least one device); the best one by goodput is reported
Goodput counts requests that finish within their SLO per second.

    python benchmarks/elastic_sim.py [--quick]
"""
from __future__ import annotations

import argparse

from dataclasses import replace

from omnistage.elastic.sim import StageModel, shifting_trace, simulate
from omnistage.graph.schema import ElasticConfig

CHAT = StageModel("chat", base_s=0.004, per_request_s=0.0001, steps=128, max_batch=64)
IMAGE = StageModel("image", base_s=0.008, per_request_s=0.0016, steps=25, max_batch=32)
SLO = {"chat": 4.0, "image": 5.0}
# The controller's shipped defaults (ElasticConfig), with a 5 s model reload.
DEFAULTS = ElasticConfig()
POLICY = replace(DEFAULTS, reload_s=5.0)


def trace_for(devices: int, duration: float, load: float = 0.8):
    """Phases that keep ``load`` of the devices busy at the phase's best split, with the share of
    devices chat needs moving 0.8 -> 0.2 -> 0.5 (chat requests are cheap, image requests dear,
    so the request mix moves much less than the device demand)."""
    phases = [{"chat": load * devices * share * CHAT.capacity, "image": load * devices * (1 - share) * IMAGE.capacity}
              for share in (0.8, 0.2, 0.5)]
    return shifting_trace(duration, phases)


def run(devices: int, duration: float, dt: float) -> dict:
    trace = trace_for(devices, duration)
    models = [CHAT, IMAGE]
    even = {"chat": devices // 2, "image": devices - devices // 2}
    elastic = simulate(models, even, trace, duration, policy=POLICY, dt=dt, interval_s=DEFAULTS.interval_s)
    splits = range(1, devices) if devices <= 16 else range(1, devices, max(1, devices // 16))
    statics = [(simulate(models, {"chat": c, "image": devices - c}, trace, duration, dt=dt), c) for c in splits]
    best, best_c = max(statics, key=lambda s: s[0].goodput(SLO))
    return {"devices": devices, "requests": len(trace), "elastic": elastic, "static": best, "split": best_c}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes, duration, dt = ([8], 120.0, 0.05) if args.quick else ([8, 16, 64], 300.0, 0.05)
    print(f"{'devices':>7s} | {'requests':>8s} | {'system':28s} | {'goodput req/s':>13s} | {'p99 s':>7s} | actions")
    print("-" * 88)
    ratios = []
    for n in sizes:
        r = run(n, duration, dt)
        e, s = r["elastic"], r["static"]
        print(f"{n:7d} | {r['requests']:8d} | {'elastic (from even split)':28s} | {e.goodput(SLO):13.1f} | "
              f"{e.p99():7.2f} | {len(e.actions)}")
        label = f"best static ({r['split']} chat / {n - r['split']} image)"
        print(f"{'':7s} | {'':8s} | {label:28s} | {s.goodput(SLO):13.1f} | {s.p99():7.2f} | -")
        ratios.append(e.goodput(SLO) / max(s.goodput(SLO), 1e-9))
    print(f"RESULT goodput_ratio={min(ratios):.2f}")


if __name__ == "__main__":
    main()
