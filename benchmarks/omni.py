"""Spoken chat (text + speech out) on Qwen2.5-Omni: omnistage's thinker -> talker -> vocoder
stages against the reference ``Qwen2_5OmniForConditionalGeneration.generate``.

Workload: distinct one-line questions; every reply is ``TEXT_TOKENS`` text tokens and
``CODEC_TOKENS`` codec tokens (8 s of speech at 50 codec tokens/s: about what 40 tokens of text
take to say), end-of-sequence ignored on both sides; thinker and talker greedy on both sides, so
both do the same work (the same tokens). Token2wav settings are the reference's (10 ODE steps,
guidance 0.5).
  * omnistage: ``examples/omni.yaml`` in real worker processes; C clients each send their next
    request when the previous one finished (closed loop), for C in 1, 8, 32
  * HF reference: ``generate`` called one request at a time, in the order they arrive. Its
    service times are measured; the rows at concurrency C > 1 are modelled, not measured: C
    closed-loop clients queueing (FIFO) for one server with those service times, which is what
    C users of one such server see (labelled "queued (modelled)")
TTFP: time to the first audio packet (for the reference, its whole answer: it returns audio only
at the end). RTF: latency over seconds of audio, per request. Warm-up requests run first on both
sides and are not counted.

    python benchmarks/omni.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

from omnistage import Pipeline
from omnistage.models.tiny import ensure_tiny
from omnistage.stages.runtime.handle import ChunkEvent

TEXT_TOKENS = 40
CODEC_TOKENS = 400
SAMPLE_RATE = 24000
WORDS = "tell me about cats dogs rain the sea music a story of the night sky trains and old maps".split()


def questions(n: int, offset: int = 0) -> list[list[dict]]:
    return [[{"role": "user", "content": f"{' '.join(WORDS[(i + k) % len(WORDS)] for k in range(5))} #{i + offset}"}]
            for i in range(n)]


def graph(tmp: Path) -> Path:
    config = yaml.safe_load((Path(__file__).parent.parent / "examples" / "omni.yaml").read_text())
    config["stages"]["thinker"]["options"]["max_tokens"] = TEXT_TOKENS
    # Greedy, and conditioned as the reference conditions one unpadded request: the talker makes
    # exactly the reference's codec tokens (the same work).
    config["stages"]["talker"]["options"].update(max_tokens=CODEC_TOKENS, temperature=0, reference_unpadded=True,
                                                 stop_token_ids=[])
    path = tmp / "omni.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def closed_loop(concurrency: int, n: int, serve) -> tuple[list[dict], float]:
    """``concurrency`` clients share ``n`` requests; ``serve(i)`` -> that request's numbers."""
    results: list[dict] = [{}] * n
    nxt = iter(range(n))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            results[i] = serve(i)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def omnistage_run(pipe: Pipeline, asked: list[list[dict]], concurrency: int) -> dict:
    def serve(i: int) -> dict:
        start = time.perf_counter()
        handle = pipe.submit(messages=asked[i], max_tokens=TEXT_TOKENS, ignore_eos=True, temperature=0,
                             modalities=["text", "audio"])
        first, samples = None, 0
        for event in handle.events(600):
            if isinstance(event, ChunkEvent) and event.modality == "audio":
                first = first or time.perf_counter()
                samples += event.value.numel()
        end = time.perf_counter()
        return {"ttfp": (first or end) - start, "e2e": end - start, "audio_s": samples / SAMPLE_RATE}
    results, total = closed_loop(concurrency, len(asked), serve)
    return summarize("omnistage", concurrency, results, total)


def reference_times(asked: list[list[dict]]) -> list[dict]:
    """Service time and audio length of each request through the reference, one at a time."""
    from transformers import AutoTokenizer, Qwen2_5OmniForConditionalGeneration
    root = ensure_tiny("qwen2.5-omni")
    model = Qwen2_5OmniForConditionalGeneration.from_pretrained(root).eval()
    tok = AutoTokenizer.from_pretrained(root / "thinker")

    def one(messages: list[dict]) -> dict:
        enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        start = time.perf_counter()
        with torch.inference_mode():
            _, wav = model.generate(**enc, thinker_max_new_tokens=TEXT_TOKENS, thinker_min_new_tokens=TEXT_TOKENS,
                                    thinker_do_sample=False, talker_do_sample=False,
                                    talker_max_new_tokens=CODEC_TOKENS, talker_eos_token_id=[])
        return {"service": time.perf_counter() - start, "audio_s": wav.numel() / SAMPLE_RATE}
    for messages in questions(2, offset=1000):
        one(messages)  # warm-up
    return [one(m) for m in asked]


def reference_run(times: list[dict], concurrency: int) -> dict:
    """C closed-loop clients in front of one server taking requests in order (FIFO)."""
    free_at, clients, results = 0.0, [0.0] * concurrency, []
    for t in times:
        c = min(range(concurrency), key=lambda k: clients[k])  # the next client to send
        arrival = clients[c]
        done = max(arrival, free_at) + t["service"]
        free_at = clients[c] = done
        results.append({"ttfp": done - arrival, "e2e": done - arrival, "audio_s": t["audio_s"]})
    name = "HF generate" if concurrency == 1 else "HF generate, queued (modelled)"
    return summarize(name, concurrency, results, free_at)


def summarize(name: str, concurrency: int, results: list[dict], total: float) -> dict:
    return {"name": name, "c": concurrency, "ttfp": statistics.mean(r["ttfp"] for r in results),
            "e2e": statistics.mean(r["e2e"] for r in results),
            "rtf": statistics.mean(r["e2e"] / max(r["audio_s"], 1e-9) for r in results),
            "req_s": len(results) / total, "audio_s": statistics.mean(r["audio_s"] for r in results)}


def table(rows: list[dict]) -> None:
    print(f"\n{'system':28s} | {'conc':>4s} | {'TTFP s':>7s} | {'e2e s':>7s} | {'RTF':>6s} | {'req/s':>6s} | {'audio s':>7s}")
    print("-" * 84)
    for r in rows:
        print(f"{r['name']:28s} | {r['c']:4d} | {r['ttfp']:7.3f} | {r['e2e']:7.3f} | {r['rtf']:6.2f} | "
              f"{r['req_s']:6.2f} | {r['audio_s']:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(os.cpu_count() or 1)
    levels = {1: 4, 8: 16, 32: 64} if not args.quick else {1: 2, 8: 8, 32: 32}
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Pipeline.from_yaml(graph(Path(tmp))) as pipe:
        omnistage_run(pipe, questions(4, offset=2000), 4)  # warm-up
        ours = {c: omnistage_run(pipe, questions(n), c) for c, n in levels.items()}
    times = reference_times(questions(max(levels.values())))
    for c, n in levels.items():
        rows += [ours[c], reference_run(times[:n], c)]
    print(f"\ntiny Qwen2.5-Omni, {TEXT_TOKENS} text tokens and {CODEC_TOKENS} codec tokens per reply, "
          "greedy, 10 token2wav ODE steps")
    table(rows)
    ref1 = next(r for r in rows if r["c"] == 1 and r["name"] != "omnistage")
    ref32 = next(r for r in rows if r["c"] == 32 and r["name"] != "omnistage")
    print(f"RESULT ttfp_ratio={ours[1]['ttfp'] / ref1['e2e']:.3f} speedup={ours[32]['req_s'] / ref32['req_s']:.2f}")


if __name__ == "__main__":
    main()
