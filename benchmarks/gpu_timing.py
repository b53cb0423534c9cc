"""The measurements of ``gpu_check.py``: the device's own floors (copy bandwidth, bf16 matmul
peak), the AR engine's decode and prefill against them and against HF ``generate``, and
step-batched diffusion against diffusers one at a time. Every function takes its sizes, so the
same code runs at toy sizes on a CPU (CI) and at full size on a GPU."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from omnistage.ar_engine.attention import ATTN_IMPLEMENTATION
from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.engine import EngineRequest, LLMEngine
from omnistage.ar_engine.sampling import SamplingParams


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the model's dimensions and the workloads."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    batches: tuple[int, ...]  # decode batch sizes; the first is the floor's, ``hf_batch`` is compared to HF
    hf_batch: int
    prompt: int  # decode prompts' length
    new_tokens: int
    prefill_seqs: int
    prefill_len: int
    matmul: int  # side of the square matmul the peak is read from
    copy_mib: int
    image_size: int
    images: int
    handoff_mib: tuple[int, ...] = (4, 64, 256)  # handed between processes (256 MiB: the KV of ~4.6k tokens of Qwen2-7B)


# ~1B parameters (Qwen2 layout, untied head), the decode and prefill workloads.
FULL = Sizes(2048, 20, 16, 8, 5632, 32000, (1, 16, 64, 256), 64, 128, 128, 8, 2048, 8192, 1024, 256, 32)
SMOKE = Sizes(64, 2, 4, 2, 128, 512, (1, 4), 4, 16, 8, 2, 64, 128, 8, 64, 3, (1,))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any], repeat: int = 3) -> float:
    """Seconds of one call, the best of ``repeat`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(device: str, mib: int) -> float:
    """Bytes per second a device-to-device copy moves (read plus write)."""
    src = torch.empty(mib << 18, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(device, lambda: dst.copy_(src))


def matmul_peak(device: str, n: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n x n by n x n matmul."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n ** 3 / timed(device, lambda: a @ b)


def random_model(sizes: Sizes, device: str, dtype: torch.dtype) -> Any:
    config = Qwen2Config(vocab_size=sizes.vocab, hidden_size=sizes.hidden, num_hidden_layers=sizes.layers,
                         num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
                         intermediate_size=sizes.intermediate, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype).eval()


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prompts(sizes: Sizes, n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, sizes.vocab, (n, length), generator=g).tolist()


def engine_for(model: Any, batch: int, max_len: int) -> LLMEngine:
    """The engine over ``model`` (switched to the paged attention; ``run_hf`` switches it back)."""
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    # A cache for the batch's sequences, not the card's free memory: HF generate runs on the same card.
    config = EngineConfig(max_model_len=max_len, prefix_caching=False, max_tokens_per_step=8192,
                          num_blocks=batch * -(-max_len // 16))
    return LLMEngine(model, None, config, max_seqs=batch)


def run_engine(engine: LLMEngine, ids: list[list[int]], new: int, device: str) -> dict[str, Any]:
    """Generate ``new`` tokens for every prompt. Once every prompt has its first token, each
    further step is a decode of the whole batch: those steps are timed one by one."""
    for i, prompt in enumerate(ids):
        engine.add(EngineRequest(f"r{i}", prompt, SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)))
    out: dict[str, list[int]] = {}
    steps, started = [], time.perf_counter()
    while engine.has_work():
        decoding = len(out) == len(ids)
        synchronize(device)
        t = time.perf_counter()
        results = engine.step()
        synchronize(device)
        if decoding:
            steps.append(time.perf_counter() - t)
        for r in results:
            out.setdefault(r.rid, []).extend(r.tokens)
    seconds = time.perf_counter() - started
    return {"ids": [out[f"r{i}"] for i in range(len(ids))], "seconds": seconds, "decode_steps": steps}


def run_hf(model: Any, ids: list[list[int]], new: int, device: str) -> dict[str, Any]:
    """HF ``generate`` over the same prompts in one batch (equal lengths: no padding)."""
    model.set_attn_implementation("sdpa")
    inputs = torch.tensor(ids, device=device)
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0)
    synchronize(device)
    return {"ids": out[:, inputs.shape[1]:].tolist(), "seconds": time.perf_counter() - start}


def prefill_flops(model: Any, seqs: int, length: int) -> float:
    """Matmul FLOPs of a prefill: 2 per weight (embeddings excepted) per token, plus causal
    attention's QK^T and PV (half of the square, per layer)."""
    cfg = model.config
    weights = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    attention = 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size * length * length / 2
    return seqs * (2 * weights * length + attention)
