"""Image+text chat: the multimodal prefix/encoder cache and encode disaggregation.

1. Repeated images: 64 requests over 8 distinct images (one image and a question each),
   arriving in 8 waves of 8 (each wave shows every image once, as users keep asking about the
   same pictures; a wave arrives when the last one is done), through the encode -> ar graph with
   caches on and off, and through HF generate one request at a time (processor + generate, as a
   user would) in the same waves. TTFT counts from the wave's arrival on every side. Greedy, 16
   tokens.
2. Text-only requests alone, then under a load of many-image requests, with a separate encode
   stage and with encoding colocated in the LM stage.

    python benchmarks/multimodal.py [--quick]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration
from transformers.generation.streamers import BaseStreamer

from omnistage import Pipeline
from omnistage.ar_engine.multimodal import expand_image_tokens
from omnistage.models.catalog import cache_root
from omnistage.models.tiny import ensure_tiny

SPLIT = """
name: bench-vl
models:
  vl: {{path: "{path}"}}
stages:
  vision:
    kind: encode
    model: vl
    inputs: {{images: request.images}}
    batching: {{max_batch: 32}}
    options: {{cache_mb: {cache_mb}}}
  llm:
    kind: ar
    model: vl
    inputs: {{messages: request.messages, images: request.images, image_embeds: vision.embeddings}}
    outputs: {{text: response.text}}
    batching: {{max_batch: 64}}
    options: {{prefix_caching: {prefix}, media_cache_mb: {cache_mb}}}
"""
COLOCATED = """
name: bench-vl-colocated
models:
  vl: {{path: "{path}"}}
stages:
  llm:
    kind: ar
    model: vl
    inputs: {{messages: request.messages, images: request.images}}
    outputs: {{text: response.text}}
    batching: {{max_batch: 64}}
"""
NEW = 16


def bench_model() -> Path:
    """A small Qwen2-VL (random weights, ~25M parameters) taking images up to 448x448, so that
    encoding and prefill cost what they would relative to decoding; built once."""
    out = cache_root() / "bench-qwen2-vl"
    if (out / "config.json").exists():
        return out
    tiny = ensure_tiny("qwen2-vl")
    config = AutoConfig.from_pretrained(tiny)
    config.vision_config.update(dict(depth=6, embed_dim=192, num_heads=6, hidden_size=384))
    rope = dict(config.text_config.rope_parameters, mrope_section=[8, 12, 12])  # half of head_dim 64
    config.text_config.update(dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                                   num_attention_heads=6, num_key_value_heads=2, rope_parameters=rope,
                                   layer_types=["full_attention"] * 6))
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)
    AutoImageProcessor.from_pretrained(tiny, max_pixels=448 * 448).save_pretrained(out)
    return out


def picture(seed: int, size: int = 448) -> bytes:
    g = torch.Generator().manual_seed(seed)
    buf = io.BytesIO()
    Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def image_request(i: int, images: list[bytes]) -> dict:
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": f"Question {i}: what is shown?"}]
    return {"messages": [{"role": "user", "content": content}], "images": images}


def pipeline(text: str) -> Pipeline:
    tmp = Path(tempfile.mkdtemp()) / "graph.yaml"
    tmp.write_text(text)
    return Pipeline.from_yaml(tmp)


def run_batch(pipe: Pipeline, requests: list[dict], wave: int | None = None) -> dict:
    """All requests at once, or in waves of ``wave`` (each wave submitted when the last ends)."""
    wave = wave or len(requests)
    start = time.perf_counter()
    ttfts = []
    for i in range(0, len(requests), wave):
        arrived = time.perf_counter()  # the wave's requests all arrive now; TTFT counts from here
        batch = [pipe.submit(temperature=0, max_tokens=NEW, ignore_eos=True, **r) for r in requests[i:i + wave]]
        for h in batch:
            h.result(600)
        ttfts += [h.first_at - arrived for h in batch]
    total = time.perf_counter() - start
    return summary(len(requests) / total, ttfts, wave)


def summary(req_s: float, ttfts: list[float], first_wave: int) -> dict:
    """Mean TTFT over all requests, and over the repeats (requests after the first wave)."""
    return {"req_s": req_s, "ttft": statistics.mean(ttfts), "p99_ttft": max(ttfts),
            "repeat_ttft": statistics.mean(ttfts[first_wave:] or ttfts)}


def repeated_images(path: Path, n: int, distinct: int) -> dict:
    images = [picture(s) for s in range(distinct)]
    requests = [image_request(i // distinct, [images[i % distinct]]) for i in range(n)]
    warm = [image_request(i, [picture(1000 + i)]) for i in range(4)]
    rows = {}
    for name, cache_mb, prefix in (("omnistage, caches on", 256, "true"), ("omnistage, caches off", 0, "false")):
        with pipeline(SPLIT.format(path=path, cache_mb=cache_mb, prefix=prefix)) as pipe:
            run_batch(pipe, warm)
            rows[name] = run_batch(pipe, requests, wave=distinct)
    rows["HF generate, one at a time"] = hf_one_at_a_time(path, requests, wave=distinct)
    return rows


def hf_one_at_a_time(path: Path, requests: list[dict], wave: int) -> dict:
    """The same waves as omnistage's, on the same clock: a wave arrives when the last one is done;
    its requests run one at a time, each waiting for those before it."""
    tok, processor = AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()

    def generate(req: dict) -> float:
        """Run one request; returns when its first new token appeared (perf_counter)."""
        first = FirstToken()
        prompt = tok.apply_chat_template(req["messages"], add_generation_prompt=True, tokenize=False)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in req["images"]]
        pixels = processor(images=images, return_tensors="pt")
        ids, _ = expand_image_tokens(tok(prompt, add_special_tokens=False)["input_ids"], model.config.image_token_id,
                                     (pixels["image_grid_thw"].prod(-1) // 4).tolist())
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW,
                           min_new_tokens=NEW, do_sample=False, pixel_values=pixels["pixel_values"],
                           image_grid_thw=pixels["image_grid_thw"],
                           mm_token_type_ids=(input_ids == model.config.image_token_id).int(), streamer=first)
        return first.at

    generate(image_request(0, [picture(999)]))  # warm-up
    start = time.perf_counter()
    ttfts = []
    for i in range(0, len(requests), wave):
        arrived = time.perf_counter()
        ttfts += [generate(req) - arrived for req in requests[i:i + wave]]
    return summary(len(requests) / (time.perf_counter() - start), ttfts, wave)


class FirstToken(BaseStreamer):
    """Notes when generate produces its first new token (its first put() is the prompt)."""

    def __init__(self) -> None:
        self.calls, self.at = 0, 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def text_under_image_load(graph: str, texts: int, heavy: int) -> tuple[float, float]:
    """Mean TTFT of text-only requests alone, and while many-image requests are running."""
    text_reqs = [{"messages": [{"role": "user", "content": f"Tell me about topic {i}"}]} for i in range(texts)]
    load = [image_request(i, [picture(2000 + 4 * i + k) for k in range(4)]) for i in range(heavy)]
    with pipeline(graph) as pipe:
        run_batch(pipe, text_reqs[:2])
        alone = statistics.mean(ttft_one(pipe, r) for r in text_reqs)
        busy = [pipe.submit(temperature=0, max_tokens=NEW, ignore_eos=True, **r) for r in load]
        loaded = statistics.mean(ttft_one(pipe, r) for r in text_reqs)
        for h in busy:
            h.result(600)
    return alone, loaded


def ttft_one(pipe: Pipeline, req: dict) -> float:
    handle = pipe.submit(temperature=0, max_tokens=2, **req)
    handle.result(600)
    return handle.first_at - handle.created_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n, distinct, texts, heavy = (16, 4, 3, 4) if args.quick else (64, 8, 8, 16)
    path = bench_model()
    rows = repeated_images(path, n, distinct)
    print(f"\nrepeated images: {n} requests over {distinct} distinct 448x448 images, {NEW} new tokens "
          f"(Qwen2-VL ~25M, random weights)")
    print(f"{'system':30s} | {'requests/s':>10s} | {'mean TTFT ms':>12s} | {'repeats TTFT ms':>15s} | "
          f"{'max TTFT ms':>11s}")
    print("-" * 90)
    for name, r in rows.items():
        print(f"{name:30s} | {r['req_s']:10.2f} | {r['ttft'] * 1000:12.1f} | {r['repeat_ttft'] * 1000:15.1f} | "
              f"{r['p99_ttft'] * 1000:11.1f}")
    split = text_under_image_load(SPLIT.format(path=path, cache_mb=256, prefix="true"), texts, heavy)
    colocated = text_under_image_load(COLOCATED.format(path=path), texts, heavy)
    print(f"\ntext-only TTFT ms, alone -> under {heavy} concurrent 4-image requests")
    print(f"  separate encode stage: {split[0] * 1000:.1f} -> {split[1] * 1000:.1f}")
    print(f"  encoding in the LM stage: {colocated[0] * 1000:.1f} -> {colocated[1] * 1000:.1f}")
    on, off = rows["omnistage, caches on"], rows["omnistage, caches off"]
    print(f"RESULT cached_ttft_ratio={on['repeat_ttft'] / off['repeat_ttft']:.3f} "
          f"speedup={on['req_s'] / rows['HF generate, one at a time']['req_s']:.2f} "
          f"text_ttft_ratio={split[1] / split[0]:.2f}")


if __name__ == "__main__":
    main()
