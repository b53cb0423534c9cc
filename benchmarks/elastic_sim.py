"""Elastic allocation against the best static split, simulated on clusters of 8 to 64 devices.

Four request types share the devices, each served by its own unit: text chat and image chat (the
text-only and multimodal groups of one LLM stage, as in ElasticMM: a device moves between them
without reloading), image generation and speech. Their service-time models are measured on real
worker processes (``benchmarks/elastic_calibrate.py``: tiny Qwen2-VL for both groups, SD at
32x32 with 20 steps, SpeechT5). The trace rotates which type is popular: for 100 s each in turn,
the popular type's requests need 60% of the devices' time and the other three 13% each, 70% of
the cluster busy on average; Poisson arrivals, 3x faster for 2 s every 20 s (the rates are
means, bursts included).
The same trace runs on
  * elastic: starts from the even split; the controller (omnistage.elastic.policy, its default
    settings, a 5 s model reload) moves devices
  * every static split (each type at least one device); the best by goodput is reported
Goodput counts requests finished within their SLO per second: 2 s for chat, image chat and
speech, 1.25x a full batch's time for image generation (printed; a full batch of 32 takes 9.45 s
in the 2026-12-05 calibration, so 11.8 s). The controller is given each unit's wait budget (its
SLO less a full batch's time), so it aims at goodput. A second trace
shifts between text chat and image generation only (device demand 80/20, 20/80, 50/50). Each
table's ceiling column is offered / best static: no allocation can pass it, as goodput cannot
exceed what is offered. A second table per trace runs both sides again with early shedding
(``slo: {shed: true}``: a request predicted to wait past its budget is refused on arrival) and
compares elastic with shedding against the best static split with shedding (like with like),
and, for reference, against the best static split without it.

    python benchmarks/elastic_sim.py [--quick] [--two]
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from omnistage.elastic.calibration import load, staleness
from omnistage.elastic.sim import StageModel, best_static, shifting_trace, simulate
from omnistage.graph.schema import ElasticConfig

ROOT = Path(__file__).resolve().parent.parent
# Measured by benchmarks/elastic_calibrate.py (one replica, one thread), with its date and commit.
CALIBRATION = load(ROOT / "benchmarks" / "elastic_calibration.json")
MODELS = [CALIBRATION.model(name) for name in ("llm/text", "llm/multimodal", "image", "speech")]
# An image request's SLO: 1.25x the time a full batch of them takes (a tighter one fails every
# full batch; the chat-like types get 2 s).
IMAGE_SLO_S = round(1.25 * MODELS[2].steps * MODELS[2].step_s(MODELS[2].max_batch), 1)
SLO = {"llm/text": 2.0, "llm/multimodal": 2.0, "image": IMAGE_SLO_S, "speech": 2.0}
POLICY = replace(ElasticConfig(), reload_s=5.0)
PHASE_S, LOAD, POPULAR = 100.0, 0.7, 0.6


def rotating(models: list[StageModel], devices: int):
    """Each type popular in turn: its requests need POPULAR of the busy device time."""
    rest = (1 - POPULAR) / (len(models) - 1)
    phases = [{m.name: LOAD * devices * (POPULAR if m is hot else rest) * m.capacity for m in models}
              for hot in models]
    return shifting_trace(PHASE_S * len(phases), phases), PHASE_S * len(phases)


def two_way(models: list[StageModel], devices: int):
    chat, image = models[0], models[2]
    phases = [{chat.name: LOAD * devices * share * chat.capacity, image.name: LOAD * devices * (1 - share) * image.capacity}
              for share in (0.8, 0.2, 0.5)]
    return shifting_trace(PHASE_S * len(phases), phases), PHASE_S * len(phases)


def run(models: list[StageModel], devices: int, two: bool, shed: bool = False) -> dict:
    trace, duration = (two_way if two else rotating)(MODELS, devices)
    even = {m.name: devices // len(models) + (i < devices % len(models)) for i, m in enumerate(models)}
    elastic = simulate(models, even, trace, duration, policy=POLICY, interval_s=POLICY.interval_s, dt=0.05, slo=SLO,
                       shed=shed)
    split, static_goodput = best_static(models, trace, devices, duration, SLO, dt=0.05, shed=shed)
    static = simulate(models, split, trace, duration, dt=0.05, slo=SLO, shed=shed)
    return {"devices": devices, "requests": len(trace), "offered": len(trace) / duration, "elastic": elastic,
            "split": split, "static": static_goodput, "static_p99": static.p99(), "static_shed": static.shed}


def shed_table(models: list[StageModel], sizes: list[int], two: bool, unshed_static: list[float]) -> float:
    """Both sides shedding: the smallest elastic / best static ratio."""
    print(f"{'devices':>7s} | {'elastic goodput':>15s} | {'refused':>7s} | {'best static split':42s} | {'goodput':>7s} | "
          f"{'refused':>7s} | ratio | vs static without shedding")
    print("-" * 130)
    ratios = []
    for n, before in zip(sizes, unshed_static):
        r = run(models, n, two, shed=True)
        e = r["elastic"]
        split = " / ".join(f"{v} {k}" for k, v in r["split"].items())
        ratios.append(e.goodput(SLO) / max(r["static"], 1e-9))
        print(f"{n:7d} | {e.goodput(SLO):15.1f} | {e.shed:7d} | {split:42s} | {r['static']:7.1f} | "
              f"{r['static_shed']:7d} | {ratios[-1]:5.2f} | {e.goodput(SLO) / max(before, 1e-9):.2f}")
    return min(ratios)


def table(models: list[StageModel], sizes: list[int], two: bool) -> tuple[float, float, list[float]]:
    """One trace on every size: (smallest elastic / best static ratio, smallest ceiling, the best
    static goodput per size). The ceiling is offered / best static: what an elastic allocation
    that served every request within its SLO would reach."""
    print(f"{'devices':>7s} | {'offered req/s':>13s} | {'elastic goodput':>15s} | {'p99 s':>6s} | {'actions':>7s} | "
          f"{'best static split':42s} | {'goodput':>7s} | {'p99 s':>6s} | ratio | ceiling")
    print("-" * 139)
    ratios, ceilings, statics = [], [], []
    for n in sizes:
        r = run(models, n, two)
        e = r["elastic"]
        split = " / ".join(f"{v} {k}" for k, v in r["split"].items())
        ratios.append(e.goodput(SLO) / max(r["static"], 1e-9))
        ceilings.append(r["offered"] / max(r["static"], 1e-9))
        statics.append(r["static"])
        print(f"{n:7d} | {r['offered']:13.1f} | {e.goodput(SLO):15.1f} | {e.p99():6.2f} | {len(e.actions):7d} | "
              f"{split:42s} | {r['static']:7.1f} | {r['static_p99']:6.2f} | {ratios[-1]:5.2f} | {ceilings[-1]:.2f}")
    return min(ratios), min(ceilings), statics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 devices only")
    parser.add_argument("--two", action="store_true", help="the two-type trace only (text chat / image generation)")
    args = parser.parse_args()
    sizes = [8] if args.quick else [8, 16, 32, 64]
    stale = staleness(CALIBRATION, ROOT)
    print(f"service times measured {CALIBRATION.date} at commit {CALIBRATION.commit[:10]}"
          + (f"; STALE: {stale}: rerun benchmarks/elastic_calibrate.py" if stale else "; the engines have not changed since"))
    print(f"SLOs: {', '.join(f'{k} {v:g} s' for k, v in SLO.items())}")
    result = []
    if not args.two:
        print("rotating trace (four types)")
        ratio, ceiling, statics = table(MODELS, sizes, False)
        print("rotating trace, both sides shedding")
        shed = shed_table(MODELS, sizes, False, statics)
        result += [f"goodput_ratio={ratio:.2f}", f"ceiling={ceiling:.2f}", f"shed_ratio={shed:.2f}"]
    print("two-type trace (text chat / image generation)")
    two_ratio, two_ceiling, statics = table([MODELS[0], MODELS[2]], sizes, True)
    print("two-type trace, both sides shedding")
    two_shed = shed_table([MODELS[0], MODELS[2]], sizes, True, statics)
    result += [f"two_type_ratio={two_ratio:.2f}", f"two_type_ceiling={two_ceiling:.2f}",
               f"two_type_shed_ratio={two_shed:.2f}"]
    print("RESULT " + " ".join(result))


if __name__ == "__main__":
    main()
