"""KV cache sizing: it follows the memory settings, and a max_model_len the cache cannot hold is
refused at start with the numbers."""
import subprocess
import sys

import pytest
import torch

from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.memory import plan_cache
from omnistage.ar_engine.shape import ModelShape

CPU = torch.device("cpu")


def plan(config, context=4096, max_seqs=8):
    shape = ModelShape(layers=2, kv_heads=2, head_dim=16, itemsize=4, context_len=context)  # 8 KiB per block
    return plan_cache(config, shape, max_seqs=max_seqs, device=CPU)


def test_the_cache_follows_the_memory_budget():
    small, large = plan(EngineConfig(kv_cache_mb=2)), plan(EngineConfig(kv_cache_mb=8))
    assert (small.num_blocks, large.num_blocks) == (256, 1024) and small.tokens == 4096
    assert plan(EngineConfig(num_blocks=300)).num_blocks == 300


def test_by_default_a_cpu_cache_takes_a_share_of_available_ram_capped_at_what_the_sequences_need(monkeypatch):
    monkeypatch.setattr("omnistage.ar_engine.memory.available_ram", lambda: 1 << 30)
    need = plan(EngineConfig(), context=4096, max_seqs=8)
    assert need.num_blocks == 8 * 4096 // 16 and "max_seqs" in need.source  # 16 MiB < 0.1 GiB
    share = plan(EngineConfig(memory_utilization=0.004), context=4096, max_seqs=8)
    assert share.num_blocks == int(0.004 * (1 << 30)) // 8192 and "0.004 of 1.0 GiB" in share.source


def test_max_model_len_defaults_to_the_context_and_is_refused_beyond_the_cache_or_the_model():
    assert plan(EngineConfig(kv_cache_mb=8)).max_model_len == 4096
    assert plan(EngineConfig(kv_cache_mb=1, max_model_len=1000)).max_model_len == 1000
    with pytest.raises(ValueError, match=r"holds 2048 tokens .*fewer than one sequence of max_model_len 4096.*"
                                         r"max_model_len <= 2048"):
        plan(EngineConfig(num_blocks=128))
    with pytest.raises(ValueError, match="longer than the model's context"):
        plan(EngineConfig(max_model_len=8192))


def test_a_gpu_keeps_room_for_a_step_beside_the_cache():
    shape = ModelShape(layers=28, kv_heads=4, head_dim=128, itemsize=2, context_len=32768, heads=28, hidden=3584,
                       intermediate=18944, vocab=152064)
    # A 2048-token prefill chunk over an 8k context: its scores alone are 28 x 2048 x 8192 x 4 bytes.
    assert shape.activation_bytes(2048, 8192, 64) >= 28 * 2048 * 8192 * 4 + 64 * 152064 * 4


def test_serve_refuses_to_start_with_a_cache_smaller_than_one_sequence():
    done = subprocess.run([sys.executable, "-m", "omnistage.cli", "serve", "tiny:qwen2", "--kv-cache-memory", "1M",
                           "--max-model-len", "4096", "--port", "0"], capture_output=True, text=True, timeout=180)
    assert done.returncode != 0
    assert "fewer than one sequence of max_model_len 4096" in done.stderr, done.stderr[-3000:]
