"""Service-time models for the elastic simulator, measured on real worker processes.

For each request type of ``benchmarks/elastic_sim.py`` this starts a one-stage graph (one
replica, one thread), times one request alone (median of three) and a burst of ``max_batch`` at
once (median of three, after a
warm-up), and fits the simulator's model: a request takes ``steps`` engine steps, a step over
``b`` requests takes ``base_s + per_request_s * b``. The fit reproduces both measurements: the
latency of a lone request and the throughput of a full batch. The models are saved, with the
date and commit, to ``benchmarks/elastic_calibration.json``, which the simulator reads.

    python benchmarks/elastic_calibrate.py [request type ...]
"""
from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from omnistage import Pipeline
from omnistage.elastic.calibration import save
from omnistage.elastic.sim import StageModel

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION = ROOT / "benchmarks" / "elastic_calibration.json"

def stage(kind: str, inputs: str, output: str, batch: int, options: str = "{}") -> str:
    return (f"\n  s:\n    kind: {kind}\n    model: m\n    inputs: {{{inputs}}}\n    outputs: {{{output}}}\n"
            f"    batching: {{max_batch: {batch}}}\n    options: {options}\n")


# request type: (stage, model, steps per request, max batch)
# Text chat and image chat are the two modality groups of one Qwen2-VL stage: same model, same batch.
LLM = stage("ar", "messages: request.messages, images: request.images", "text: response.text", 64)
STAGES = {
    "llm/text": (LLM, "tiny:qwen2-vl", 128, 64),
    "llm/multimodal": (LLM, "tiny:qwen2-vl", 128, 64),
    "image": (stage("diffusion", "prompt: request.prompt", "image: response.image", 32,
                    "{height: 32, width: 32, num_inference_steps: 20}"), "tiny:sd", 20, 32),
    "speech": (stage("tts", "text: request.prompt", "audio: response.audio", 16), "tiny:speecht5", 50, 16),
}


def request(name: str) -> dict:
    if name == "llm/text":
        return dict(messages=[{"role": "user", "content": "tell me a story"}], max_tokens=128, ignore_eos=True)
    if name == "llm/multimodal":
        buf = io.BytesIO()
        Image.new("RGB", (56, 56), (200, 30, 30)).save(buf, format="PNG")
        return dict(messages=[{"role": "user", "content": [{"type": "image", "image": buf.getvalue()},
                                                          {"type": "text", "text": "what is this?"}]}],
                    max_tokens=128, ignore_eos=True)
    if name == "image":
        return dict(prompt="a red cat", modalities=["image"])
    return dict(prompt="the quick brown fox jumps over the lazy dog", modalities=["audio"])


def measure(name: str) -> dict:
    body, model, steps, batch = STAGES[name]
    path = Path(tempfile.mkdtemp()) / "g.yaml"
    path.write_text(f"name: cal\nmodels:\n  m: {{path: \"{model}\"}}\nstages:{body}    resources: {{threads: 1}}\n")
    with Pipeline.from_yaml(path) as pipe:
        for _ in range(2):
            pipe.generate(**request(name))
        alone = []
        for _ in range(3):
            start = time.perf_counter()
            pipe.generate(**request(name))
            alone.append(time.perf_counter() - start)
        fulls = []
        for _ in range(3):  # (the median of three full batches: one is at the mercy of the machine's noise)
            start = time.perf_counter()
            for handle in [pipe.submit(**request(name)) for _ in range(batch)]:
                handle.result(600)
            fulls.append(time.perf_counter() - start)
        full = statistics.median(fulls)
    one = statistics.median(alone)
    per = max(0.0, (full - one) / (steps * (batch - 1)))
    return {"name": name, "alone_s": one, "batch_s": full, "steps": steps, "max_batch": batch,
            "base_s": one / steps - per, "per_request_s": per}


def main() -> None:
    print(f"{'request':14s} | {'alone s':>7s} | {'batch':>5s} | {'batch s':>7s} | {'steps':>5s} | "
          f"{'base_s':>8s} | {'per_request_s':>13s} | req/s per replica")
    models = []
    for name in sys.argv[1:] or STAGES:
        r = measure(name)
        rate = r["max_batch"] / r["batch_s"]
        print(f"{name:14s} | {r['alone_s']:7.3f} | {r['max_batch']:5d} | {r['batch_s']:7.3f} | {r['steps']:5d} | "
              f"{r['base_s']:8.5f} | {r['per_request_s']:13.6f} | {rate:.1f}")
        models.append(StageModel(name, round(r["base_s"], 6), round(r["per_request_s"], 6), r["steps"], r["max_batch"]))
    if sys.argv[1:]:
        print("(not saved: a calibration holds every request type, measured together)")
        return
    cal = save(CALIBRATION, models, ROOT)
    print(f"saved to {CALIBRATION.relative_to(ROOT)}: measured {cal.date} at {cal.commit[:10] or 'no commit'}"
          + (" (uncommitted engine changes)" if cal.dirty else ""))


if __name__ == "__main__":
    main()
