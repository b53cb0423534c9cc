"""How big the KV cache is, decided once when an engine starts, and said in one line.

Explicit settings win (``num_blocks``, then ``kv_cache_mb``). Otherwise the cache takes what the
device has to spare once the weights are loaded: on a GPU, ``memory_utilization`` (default: the
share the process is capped at, when it shares the card with other replicas, see
graph/gpu_budget.py; else 0.9, as vLLM's ``--gpu-memory-utilization``) of its total memory minus
what this process holds (the weights) and room for one step's activations, and never more than
is free; on a
CPU, ``memory_utilization`` (default 0.1) of the RAM available then, but never more than
``max_seqs`` sequences of ``max_model_len`` tokens need (a CPU's RAM is shared with every other
stage and process). A cache that cannot hold one sequence of ``max_model_len`` is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.shape import ModelShape

GPU_UTILIZATION = 0.9
CPU_UTILIZATION = 0.1


@dataclass(frozen=True)
class CachePlan:
    num_blocks: int
    block_size: int
    block_bytes: int  # every layer's K and V of one block
    max_model_len: int
    source: str  # what decided the size

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.block_size

    def describe(self, dtype: torch.dtype) -> str:
        mib = self.num_blocks * self.block_bytes / (1 << 20)
        full = self.tokens / self.max_model_len
        return (f"KV cache {self.num_blocks} blocks x {self.block_size} = {self.tokens} tokens "
                f"({mib:.0f} MiB {str(dtype).removeprefix('torch.')}, {self.source}); max_model_len "
                f"{self.max_model_len}: {full:.1f} sequences at full length")


def plan_cache(config: EngineConfig, shape: ModelShape, max_seqs: int, device: torch.device,
               graphs: bool = False) -> CachePlan:
    """``graphs``: decode steps will be captured as CUDA graphs, whose memory pool is kept beside
    the cache. Raises ValueError when ``max_model_len`` exceeds the model's context or the cache."""
    max_len = config.max_model_len or shape.context_len
    if max_len > shape.context_len:
        raise ValueError(f"max_model_len {max_len} is longer than the model's context ({shape.context_len} tokens)")
    block_bytes = shape.block_bytes(config.block_size)
    if config.num_blocks is not None:
        blocks, source = config.num_blocks, "num_blocks"
    elif config.kv_cache_mb is not None:
        blocks, source = (config.kv_cache_mb << 20) // block_bytes, f"kv_cache_mb {config.kv_cache_mb}"
    else:
        blocks, source = _from_memory(config, shape, block_bytes, max_len, max_seqs, device, graphs)
    plan = CachePlan(blocks, config.block_size, block_bytes, max_len, source)
    if plan.tokens < max_len:
        raise ValueError(f"the KV cache holds {plan.tokens} tokens ({source}), fewer than one sequence of "
                         f"max_model_len {max_len}: give it more memory (kv_cache_mb, memory_utilization) or "
                         f"set max_model_len <= {plan.tokens}")
    return plan


def _from_memory(config: EngineConfig, shape: ModelShape, block_bytes: int, max_len: int, max_seqs: int,
                 device: torch.device, graphs: bool) -> tuple[int, str]:
    if device.type == "cuda":
        share = config.memory_utilization or process_share(device) or GPU_UTILIZATION
        free, total = torch.cuda.mem_get_info(device)
        activations = shape.activation_bytes(config.max_tokens_per_step, max_len, max_seqs)
        activations += shape.graph_bytes(max_seqs) if graphs else 0
        spare = min(share * total - torch.cuda.memory_reserved(device), free) - activations
        return max(0, int(spare) // block_bytes), (f"{share:g} of {device}'s {total / (1 << 30):.0f} GiB, "
                                                   f"{activations / (1 << 30):.1f} GiB kept for activations")
    share = config.memory_utilization or CPU_UTILIZATION
    available = available_ram()
    need = max_seqs * -(-max_len // config.block_size)
    blocks = min(int(share * available) // block_bytes, need)
    capped = " (all that max_seqs sequences of max_model_len need)" if blocks == need else ""
    return blocks, f"{share:g} of {available / (1 << 30):.1f} GiB available RAM{capped}"


def process_share(device: torch.device) -> float | None:
    """The share of the GPU this process is capped at (its replica's share of a card it shares
    with others, see graph/gpu_budget.py), None: not capped."""
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    return fraction if fraction < 1 else None


def available_ram() -> int:
    """Bytes of RAM available to new allocations: ``MemAvailable``, or less where a container's
    memory limit (cgroup v2 ``memory.max`` minus ``memory.current``) leaves less."""
    meminfo = Path("/proc/meminfo")
    available = None
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) << 10
    if available is None:
        import os
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit, used = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    if limit.exists() and used.exists() and limit.read_text().strip().isdigit():
        available = min(available, int(limit.read_text()) - int(used.read_text()))
    return max(0, available)
