"""The body of ``gpu_check.py``: its checks, its timings, its table, JSON and RESULT line."""
from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gpu_ipc import handoff
from gpu_ipc import table as handoff_table
from gpu_timing import (FULL, SMOKE, Sizes, copy_bandwidth, engine_for, matmul_peak, prefill_flops, prompts,
                        random_model, run_engine, run_hf, weight_bytes)

CHAT = """
name: gpu-check
models:
  lm: {{path: "tiny:qwen2"}}
stages:
  llm:
    kind: ar
    model: lm
    inputs: {{prompt: request.prompt}}
    outputs: {{text: response.text}}
    resources: {{device: "{device}"}}
    batching: {{max_batch: 8}}
"""


def check_kernels(device: str) -> str:
    """The Triton kernels against the torch reference on ``device`` (a CPU: Triton's interpreter)."""
    from tests.ar_engine.kernel_check import check_all, check_engine
    interpreted = not device.startswith("cuda")
    if interpreted and os.environ.get("TRITON_INTERPRET") != "1":
        return "skipped (a CPU runs them only under TRITON_INTERPRET=1)"
    dtypes = (torch.float32, torch.float16) if interpreted else (torch.float32, torch.float16, torch.bfloat16)
    check_all(dtypes, device)
    check_engine(device)
    return ("equal to the reference in " + ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            + "; the engine on them equals HF generate")


def check_graph(device: str) -> str:
    """A real graph (worker process) on ``device``: greedy tokens equal HF generate there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from omnistage import Pipeline
    from omnistage.models.tiny import ensure_tiny
    path = ensure_tiny("qwen2")
    texts = ["the capital of france is", "one two three four", "hello"]
    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / "chat.yaml"
        graph.write_text(CHAT.format(device=device))
        with Pipeline.from_yaml(graph) as pipe:
            handles = [pipe.submit(prompt=t, max_tokens=12, temperature=0) for t in texts]
            ours = [h.result(600).text for h in handles]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    for text, got in zip(texts, ours):
        ids = tok(text, return_tensors="pt").input_ids.to(device)
        ref = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:]
        want = tok.decode(ref, skip_special_tokens=True)
        assert got == want, f"graph on {device}: {got!r} != HF generate {want!r} for {text!r}"
    return f"{len(texts)} requests through a worker on {device}: greedy text equals HF generate"


def check_graphs(device: str) -> str:
    """Decode steps replayed from CUDA graphs (on a CPU: their static buffers, eagerly) give the
    eager path's greedy tokens, while the batch shrinks across buckets."""
    from omnistage.ar_engine.config import EngineConfig
    from omnistage.ar_engine.engine import EngineRequest, LLMEngine
    from omnistage.ar_engine.sampling import SamplingParams
    from omnistage.models.tiny import ensure_tiny
    from omnistage.stages.kinds.ar_model import load_model
    model = load_model(str(ensure_tiny("qwen2")), torch.float32, device)
    config = EngineConfig(num_blocks=64, block_size=16, max_model_len=256)
    runs = []
    for mode in ("auto" if device.startswith("cuda") else "eager", "off"):
        engine = LLMEngine(model, None, config, max_seqs=6, decode_graphs=mode)
        graphs = engine.runner.graphs
        if mode == "auto":  # (every bucket captured at start; a failed capture would run eagerly)
            assert graphs is not None and set(graphs.graphs) == set(graphs.sizes), (
                f"captured {sorted(graphs.graphs) if graphs else []} of the buckets {graphs.sizes if graphs else ()}")
        for i, new in enumerate((9, 4, 12, 6, 2, 7)):
            engine.add(EngineRequest(f"r{i}", list(range(3, 10 + 3 * i)),
                                     SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)))
        out: dict[str, list[int]] = {}
        while engine.has_work():
            for r in engine.step():
                out.setdefault(r.rid, []).extend(r.tokens)
        runs.append(out)
    assert runs[0] == runs[1], "decode steps from graphs differ from the eager path"
    return "replayed decode steps equal the eager path" if device.startswith("cuda") else "static buffers equal eager"


def decode_rows(model: Any, sizes: Sizes, device: str, floor_s: float) -> list[dict[str, Any]]:
    rows = []
    for batch in sizes.batches:
        ids = prompts(sizes, batch, sizes.prompt)
        engine = engine_for(model, batch, sizes.prompt + sizes.new_tokens + 16)
        run_engine(engine, ids, 2, device)  # warm-up (the decode graphs were captured as the engine started)
        ours = run_engine(engine, ids, sizes.new_tokens, device)
        del engine  # (its KV cache and graphs: the next batch's engine sizes its own from what is free)
        release()
        step = statistics.median(ours["decode_steps"])
        row = {"batch": batch, "tok_s": batch * sizes.new_tokens / ours["seconds"], "step_ms": step * 1e3,
               "floor_ratio": step / floor_s}
        if batch == sizes.hf_batch:
            run_hf(model, ids[:1], 2, device)  # warm-up
            hf = run_hf(model, ids, sizes.new_tokens, device)
            row["hf_tok_s"] = batch * sizes.new_tokens / hf["seconds"]
            row["same_tokens"] = sum(a == b for a, b in zip(ours["ids"], hf["ids"])) / batch
        rows.append(row)
    return rows


def release() -> None:
    """Free a dropped engine's GPU memory now (its runner and graphs refer to each other: a cycle
    that only the collector ends)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def prefill_row(model: Any, sizes: Sizes, device: str, peak: float) -> dict[str, Any]:
    ids = prompts(sizes, sizes.prefill_seqs, sizes.prefill_len, seed=1)
    engine = engine_for(model, sizes.prefill_seqs, sizes.prefill_len + 8)
    run_engine(engine, ids[:1], 1, device)  # warm-up
    seconds = run_engine(engine, ids, 1, device)["seconds"]
    flops = prefill_flops(model, sizes.prefill_seqs, sizes.prefill_len)
    return {"tokens": sizes.prefill_seqs * sizes.prefill_len, "tok_s": sizes.prefill_seqs * sizes.prefill_len / seconds,
            "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak}


def diffusion_row(sizes: Sizes, device: str) -> dict[str, Any]:
    """Step-batched diffusion (a worker on ``device``) against diffusers one at a time, tiny SD."""
    from diffusers import DiffusionPipeline
    from diffusion import run_diffusers, run_omnistage, workload

    from omnistage.models.tiny import ensure_tiny
    path = ensure_tiny("sd")
    reqs, warm = workload(sizes.images, 0.0), workload(2, 0.0, seed=1)
    ours = run_omnistage(path, sizes.image_size, reqs, warm, batch=sizes.images, device=device)
    pipe = DiffusionPipeline.from_pretrained(path).to(device)
    pipe.set_progress_bar_config(disable=True)
    theirs = run_diffusers(pipe, sizes.image_size, reqs, warm, batch=1)
    return {"images": sizes.images, "size": sizes.image_size, "ours_img_s": ours["img_s"],
            "diffusers_img_s": theirs["img_s"], "ratio": ours["img_s"] / theirs["img_s"]}


def run(device: str, smoke: bool, out: Path) -> int:
    sizes = SMOKE if smoke else FULL
    dtype = torch.bfloat16
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "device": _device_name(device), "smoke": smoke}
    report["checks"] = {"kernels": check_kernels(device), "cuda graphs": check_graphs(device),
                        "graph": check_graph(device)}
    bandwidth, peak = copy_bandwidth(device, sizes.copy_mib), matmul_peak(device, sizes.matmul, dtype)
    model = random_model(sizes, device, dtype)
    weights = weight_bytes(model)
    floor_s = weights / bandwidth
    report["floors"] = {"copy_gb_s": bandwidth / 1e9, "bf16_matmul_tflops": peak / 1e12, "params": weights // 2,
                        "decode_floor_ms": floor_s * 1e3}
    report["decode"] = decode_rows(model, sizes, device, floor_s)
    report["prefill"] = prefill_row(model, sizes, device, peak)
    report["diffusion"] = diffusion_row(sizes, device)
    report["handoff"] = handoff(device, sizes.handoff_mib, reps=2 if smoke else 5)
    ipc = device.startswith("cuda")
    report["checks"]["hand-off"] = (f"{'CUDA IPC and ' if ipc else ''}host-path hand-offs of "
                                    f"{', '.join(map(str, sizes.handoff_mib))} MiB arrived bit-identical")
    hf_row = next(r for r in report["decode"] if "hf_tok_s" in r)
    report["result"] = {"decode_floor_ratio": report["decode"][0]["floor_ratio"], "prefill_mfu": report["prefill"]["mfu"],
                        "ar_vs_hf": hf_row["tok_s"] / hf_row["hf_tok_s"],
                        "diffusion_vs_diffusers": report["diffusion"]["ratio"]}
    if ipc:
        report["result"]["ipc_vs_host"] = report["handoff"][-1]["speedup"]
    text = table(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.txt").write_text(text + "\n")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(text)
    print("RESULT " + " ".join(f"{k}={v:.3f}" for k, v in report["result"].items()))
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def table(r: dict[str, Any]) -> str:
    f = r["floors"]
    lines = [f"GPU check {r['date']} on {r['device']}" + (" (smoke sizes)" if r["smoke"] else ""),
             *(f"  check {name}: {what}" for name, what in r["checks"].items()),
             f"  copy bandwidth {f['copy_gb_s']:.0f} GB/s; bf16 matmul peak {f['bf16_matmul_tflops']:.1f} TFLOP/s; "
             f"model {f['params'] / 1e9:.2f} B params, decode floor {f['decode_floor_ms']:.2f} ms/step",
             "", "| batch | omnistage tok/s | step ms | step / floor | HF generate tok/s | same tokens |",
             "|---|---|---|---|---|---|"]
    for row in r["decode"]:
        hf = f"{row['hf_tok_s']:.0f} | {row['same_tokens']:.0%}" if "hf_tok_s" in row else "- | -"
        lines.append(f"| {row['batch']} | {row['tok_s']:.0f} | {row['step_ms']:.2f} | {row['floor_ratio']:.2f} | {hf} |")
    p, d = r["prefill"], r["diffusion"]
    lines += ["", f"prefill: {p['tokens']} tokens at {p['tok_s']:.0f} tok/s, {p['tflops']:.1f} TFLOP/s = "
                  f"{p['mfu']:.0%} of the matmul peak",
              f"diffusion (tiny SD, {d['size']}px, {d['images']} images at once): {d['ours_img_s']:.2f} img/s vs "
              f"diffusers one at a time {d['diffusers_img_s']:.2f} img/s ({d['ratio']:.2f}x)", "",
              *handoff_table(r["handoff"])]
    return "\n".join(lines)
