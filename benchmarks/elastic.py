"""Elastic allocation on real worker processes: chat and image generation share three CPU slots.

The same arrival trace runs on
  * elastic: examples/elastic.yaml's controller, starting with 2 chat slots and 1 image slot
  * every static split of the three slots (2 chat / 1 image, 1 chat / 2 image)
The trace (Poisson arrivals) is chat-heavy for 30 s (90 chats/s, more than one chat replica
serves; 2 images/s), then image-heavy for 60 s (45 images/s at 16x16 with 10 steps, more than
one image replica serves; 4 chats/s): as many requests in each phase, so a split that suits one
phase fails as many requests as one that suits the other. Goodput counts requests finished
within their SLO (2 s for both) per second of trace; refused requests miss it; p99 is over all.

    python benchmarks/elastic.py [--quick]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from omnistage import Pipeline
from omnistage.elastic.sim import shifting_trace
from omnistage.errors import Overloaded

ROOT = Path(__file__).resolve().parent.parent
SLO = {"chat": 2.0, "image": 2.0}
CHAT_HEAVY, IMAGE_HEAVY = {"chat": 90.0, "image": 2.0}, {"chat": 4.0, "image": 45.0}


def trace(phase_s: float, seed: int = 0) -> tuple[list[tuple[float, str]], float]:
    """Chat-heavy for one phase, image-heavy for two; Poisson arrivals without bursts."""
    span = 3 * phase_s
    arrivals = shifting_trace(span, [CHAT_HEAVY, IMAGE_HEAVY, IMAGE_HEAVY], seed=seed, burst_factor=1.0)
    return [(a.time, a.stage) for a in arrivals], span


def graph(chat: int, image: int, elastic: bool) -> Path:
    text = (ROOT / "examples" / "elastic.yaml").read_text()
    text = text.replace("replicas: {min: 1, max: 2, initial: 2}", f"replicas: {{min: 1, max: 2, initial: {chat}}}")
    text = text.replace("replicas: {min: 1, max: 2}}", f"replicas: {{min: 1, max: 2, initial: {image}}}}}")
    if not elastic:
        text = text.replace("  devices: [cpu, cpu, cpu]", "  enabled: false\n  devices: [cpu, cpu, cpu]")
    path = Path(tempfile.mkdtemp()) / "elastic.yaml"
    path.write_text(text)
    return path


def run(name: str, chat: int, image: int, elastic: bool, arrivals: list[tuple[float, str]], span: float) -> dict:
    with Pipeline.from_yaml(graph(chat, image, elastic)) as pipe:
        pipe.generate(prompt="warm up", max_tokens=4)
        pipe.generate(prompt="warm up", num_inference_steps=2, modalities=["image"])
        handles: list = []
        start = time.perf_counter()

        def feed() -> None:
            for at, kind in arrivals:
                time.sleep(max(0.0, start + at - time.perf_counter()))
                kw = (dict(prompt="tell me a story", max_tokens=128, ignore_eos=True) if kind == "chat"
                      else dict(prompt="a red cat", modalities=["image"]))
                try:
                    handles.append((kind, at, pipe.submit(**kw)))
                except Overloaded:  # refused (queue full): it misses its SLO
                    handles.append((kind, at, None))
        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join()
        lat = []
        for kind, at, h in handles:
            if h is None:
                lat.append((kind, float("inf")))
                continue
            h.result(600)
            lat.append((kind, h.finished_at - (start + at)))
        actions = len([a for a in pipe.controller.scaler.log if a.kind == "move"])
    good = sum(1 for kind, s in lat if s <= SLO[kind])
    ordered = sorted(s for _, s in lat)
    return {"name": name, "goodput": good / span, "p99": ordered[int(0.99 * (len(ordered) - 1))],
            "met": good / len(lat), "moves": actions}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    arrivals, span = trace(15.0 if args.quick else 30.0)
    rows = [run("elastic (starts 2 chat / 1 image)", 2, 1, True, arrivals, span),
            run("static 2 chat / 1 image", 2, 1, False, arrivals, span),
            run("static 1 chat / 2 image", 1, 2, False, arrivals, span)]
    print(f"\n{len(arrivals)} requests over {span:.0f} s: chat-heavy then image-heavy; SLO chat {SLO['chat']} s, "
          f"image {SLO['image']} s")
    print(f"{'system':36s} | {'goodput req/s':>13s} | {'within SLO':>10s} | {'p99 s':>6s} | moves")
    print("-" * 80)
    for r in rows:
        print(f"{r['name']:36s} | {r['goodput']:13.2f} | {r['met']:10.0%} | {r['p99']:6.2f} | {r['moves']}")
    best = max(rows[1:], key=lambda r: r["goodput"])
    print(f"RESULT goodput_ratio={rows[0]['goodput'] / best['goodput']:.2f}")


if __name__ == "__main__":
    main()
