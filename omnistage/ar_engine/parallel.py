"""Tensor parallelism: one engine over N ranks (processes), each holding a shard of the decoder.

Rank 0 runs the engine (scheduler, block manager, sampling) and a ``ParallelRunner``: each step
it prepares the packed inputs as a single-device runner does, broadcasts them, and runs its shard
of the forward with the others. Ranks 1..N-1 ``follow``: they receive each step's inputs and run
their shard. Weights are sharded by the model family's own tensor-parallel plan
(``from_pretrained(tp_plan="auto")``): attention heads and MLP columns split across ranks, and
the partial outputs of the row-parallel projections summed by an all-reduce inside the model.
Every rank keeps the KV cache of its own heads, at the same slots (rank 0's block tables are the
only ones). What crosses between ranks is typed: a header of integers (operation, then each
tensor's dtype and shape) and the tensors themselves, never pickled objects.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from omnistage.ar_engine.attention import AttentionMetadata, PrefillSpan
from omnistage.ar_engine.runner import ModelRunner, StepInputs, StepResult

INIT, EMBED, STEP, READ_KV, WRITE_KV, STOP = 1, 2, 3, 4, 5, 6
HEADER = 256  # int64 slots: operation, tensor count, then (dtype, ndim, 6 dims) per tensor
MAX_DIMS = 6
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool]


# Ranks 1..N-1 wait in a broadcast between steps for as long as the server is idle; a dead peer
# ends the wait at once (its connection closes), so the collective timeout only bounds a hang.
IDLE_TIMEOUT = timedelta(days=30)


def init_group(address: str, rank: int, size: int, device: str) -> None:
    """Join the replica's process group: NCCL on CUDA, gloo on a CPU (``address``: tcp://host:port
    of rank 0's rendezvous)."""
    if dist.is_initialized():
        raise RuntimeError("tensor_parallel: this process already belongs to a process group (a tensor-parallel "
                           "replica runs as processes of its own, not as a thread of another)")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=address, rank=rank, world_size=size, timeout=IDLE_TIMEOUT)


def send(op: int, tensors: list[torch.Tensor], device: torch.device) -> None:
    """Rank 0: broadcast an operation and its tensors to every rank."""
    header = torch.zeros(HEADER, dtype=torch.int64)
    header[0], header[1] = op, len(tensors)
    for i, t in enumerate(tensors):
        if t.dim() > MAX_DIMS or 2 + (i + 1) * (2 + MAX_DIMS) > HEADER:
            raise ValueError("a tensor-parallel message holds at most 31 tensors of at most 6 dimensions")
        at = 2 + i * (2 + MAX_DIMS)
        header[at], header[at + 1] = DTYPES.index(t.dtype), t.dim()
        header[at + 2:at + 2 + t.dim()] = torch.tensor(t.shape)
    dist.broadcast(header.to(device), src=0)
    for t in tensors:
        dist.broadcast(t.to(device).contiguous(), src=0)


def receive(device: torch.device) -> tuple[int, list[torch.Tensor]]:
    """Ranks 1..N-1: the next operation from rank 0 and its tensors (on ``device``)."""
    header = torch.zeros(HEADER, dtype=torch.int64, device=device)
    dist.broadcast(header, src=0)
    header = header.cpu()
    op, count = int(header[0]), int(header[1])
    tensors = []
    for i in range(count):
        at = 2 + i * (2 + MAX_DIMS)
        dtype, ndim = DTYPES[int(header[at])], int(header[at + 1])
        t = torch.empty(header[at + 2:at + 2 + ndim].tolist(), dtype=dtype, device=device)
        dist.broadcast(t, src=0)
        tensors.append(t)
    return op, tensors


def comm_device(runner: ModelRunner) -> torch.device:
    """Where messages travel: the model's GPU under NCCL, host memory under gloo."""
    return runner.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _flatten(step: StepInputs) -> list[torch.Tensor]:
    meta = step.meta
    spans = torch.tensor([[s.q_start, s.q_end, s.first_pos] for s in meta.prefills], dtype=torch.int64).reshape(-1, 3)
    span_slots = torch.cat([s.ctx_slots.cpu() for s in meta.prefills]) if meta.prefills else torch.zeros(0, dtype=torch.int64)
    kernel_rows = meta.kernel_rows if meta.kernel_rows is not None else torch.zeros(0, dtype=torch.int64)
    return [step.inputs, step.positions, meta.slot_mapping, meta.tables, meta.token_rows, meta.ctx_lens,
            meta.decode_rows, meta.decode_block_tables, meta.decode_ctx_lens, kernel_rows,
            torch.tensor([meta.kernel_rows is not None, meta.block_size], dtype=torch.int64),
            spans, span_slots, torch.tensor(step.sample_rows, dtype=torch.int64)]


def _unflatten(tensors: list[torch.Tensor], runner: ModelRunner) -> StepInputs:
    (inputs, positions, slots, tables, token_rows, ctx_lens, decode_rows, decode_tables, decode_lens, kernel_rows,
     flags, spans, span_slots, sample_rows) = [t.to(runner.device) for t in tensors]
    prefills, at = [], 0
    for q_start, q_end, first_pos in spans.tolist():
        n = first_pos + q_end - q_start
        prefills.append(PrefillSpan(q_start, q_end, first_pos, span_slots[at:at + n]))
        at += n
    has_kernel_rows, block_size = flags.tolist()
    meta = AttentionMetadata(runner.kv_caches, slots, block_size, tables, token_rows, ctx_lens, runner.backend,
                             decode_rows, decode_tables, decode_lens, prefills,
                             kernel_rows if has_kernel_rows else None)
    return StepInputs(inputs, positions, meta, sample_rows.tolist(), inputs)


class ParallelRunner(ModelRunner):
    """Rank 0's runner: every forward and every read or write of the KV cache is done by all
    ranks together (``follow`` is the others' side). Made, it tells the others the cache's size."""

    def __init__(self, model: Any, num_blocks: int, block_size: int, **kwargs: Any) -> None:
        super().__init__(model, num_blocks, block_size, **kwargs)
        send(INIT, [torch.tensor([num_blocks, block_size], dtype=torch.int64)], comm_device(self))

    def forward(self, step: StepInputs) -> StepResult:
        send(STEP, _flatten(step), comm_device(self))
        return super().forward(step)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """A sharded embedding (a family's plan, or a tied LM head's) is looked up by all ranks."""
        if sharded(self.embed):
            send(EMBED, [ids], comm_device(self))
        return super().token_embeddings(ids)

    def read_kv(self, slots: torch.Tensor) -> torch.Tensor:
        """[layers, 2, n, kv_heads, head_dim] of every head: each rank's heads, gathered."""
        device = comm_device(self)
        send(READ_KV, [slots], device)
        return _gather_heads(super().read_kv(slots), device)

    def write_kv(self, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """Write K/V of every head; each rank keeps its own heads."""
        send(WRITE_KV, [slots, kv.to(self.kv_caches[0].dtype)], comm_device(self))
        super().write_kv(slots, _my_heads(kv))

    def stop(self) -> None:
        """Tell the other ranks to exit their loop."""
        send(STOP, [], comm_device(self))


def sharded(module: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


def _gather_heads(local: torch.Tensor, device: torch.device) -> torch.Tensor:
    parts = [torch.empty_like(local, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.to(device).contiguous())
    return torch.cat(parts, dim=3)


def _my_heads(kv: torch.Tensor) -> torch.Tensor:
    return kv.chunk(dist.get_world_size(), dim=3)[dist.get_rank()]


def follower_runner(model: Any, backend: Any, tp_size: int) -> ModelRunner:
    """Ranks 1..N-1: a runner over this rank's shard, its cache sized as rank 0 says."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    op, tensors = receive(device)
    if op != INIT:
        raise RuntimeError(f"tensor_parallel: expected the cache's size from rank 0, got operation {op}")
    num_blocks, block_size = tensors[0].tolist()
    return ModelRunner(model, num_blocks, block_size, backend=backend, tp_size=tp_size)


@torch.inference_mode()
def follow(runner: ModelRunner) -> None:
    """Ranks 1..N-1: run each step rank 0 sends, until it says stop (or its process is gone,
    when the next receive raises)."""
    device = comm_device(runner)
    while True:
        op, tensors = receive(device)
        if op == STOP:
            return
        if op == EMBED:
            runner.token_embeddings(tensors[0].to(runner.device))
        elif op == STEP:
            runner.forward(_unflatten(tensors, runner))
        elif op == READ_KV:
            _gather_heads(runner.read_kv(tensors[0].to(runner.device)), device)
        elif op == WRITE_KV:
            runner.write_kv(tensors[0].to(runner.device), _my_heads(tensors[1]))
        else:
            raise RuntimeError(f"unknown tensor-parallel operation {op}")
