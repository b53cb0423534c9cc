"""A GPU tensor handed from one process to another, as stages hand a prefill's KV to decode: the
wire's CUDA IPC handle against the host path (GPU -> a shared-memory slot -> GPU, what a stage
on another card gets), both through the real encoder and decoder, into a second process on the same card. The
receiver hashes what arrived, so each hand-off is also checked bit for bit against the sent
tensor. On a CPU only the host path exists: ``--device cpu --smoke`` runs it so that the
script's plumbing is tested without a GPU.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from gpu_timing import synchronize
from omnistage.connectors.messages import Data
from omnistage.connectors.shm import ShmRing, segment_name
from omnistage.connectors.wire import Decoder, Encoder
from omnistage.graph.placement import gpu_device

THRESHOLD = 64 << 10  # the transport's default shared-memory threshold
SESSION = f"gpuipc{os.getpid()}"


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()).hexdigest()


def _receive(conn: Connection, device: str) -> None:
    """The receiving stage: decode each message, put its tensor on ``device``, say when it is there,
    then send its hash."""
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    decoder = Decoder()
    while (count := conn.recv()) is not None:
        msg = decoder.decode([conn.recv_bytes() for _ in range(count)])
        tensor = msg.value.to(device)
        synchronize(device)
        conn.send("there")
        conn.send(digest(tensor))
        del msg, tensor
    decoder.close()


def _send(conn: Connection, encoder: Encoder, tensor: torch.Tensor, device: str) -> tuple[float, str]:
    synchronize(device)
    started = time.perf_counter()
    frames = encoder.encode(Data("r", "kv", tensor))
    conn.send(len(frames))
    for frame in frames:
        conn.send_bytes(frame)
    assert conn.recv() == "there"
    return time.perf_counter() - started, conn.recv()


def _ring(nbytes: int) -> ShmRing | None:
    """A two-slot ring for the host path, if /dev/shm has room for it (a container's may not)."""
    stat = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    if stat is None or stat.f_bavail * stat.f_frsize < 3 * nbytes:
        return None
    return ShmRing(segment_name(SESSION, "sender"), 2, nbytes)


def handoff(device: str, mib: tuple[int, ...], reps: int) -> list[dict[str, Any]]:
    """Per size: milliseconds per hand-off by each path (median of ``reps``, a warm-up excluded)."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    receiver = ctx.Process(target=_receive, args=(theirs, device), daemon=True)
    receiver.start()
    ring = _ring(max(mib) << 20)
    paths = {"host": Encoder(ring, THRESHOLD)}
    if device.startswith("cuda"):
        paths["ipc"] = Encoder(None, THRESHOLD, ipc_device=gpu_device(device))
    rows = []
    try:
        for size in mib:
            tensor = torch.randn((size << 20) // 2, dtype=torch.bfloat16, device=gpu_device(device) or device)
            tensor = tensor.reshape(-1, 1024)
            want, row = digest(tensor), {"mib": size, "host_path": "shared memory" if ring else "pipe"}
            for name, encoder in paths.items():
                times = []
                for rep in range(reps + 1):
                    seconds, got = _send(ours, encoder, tensor, device)
                    assert got == want, f"{name} hand-off of {size} MiB: the receiver's tensor differs"
                    if rep:  # (the first is a warm-up)
                        times.append(seconds)
                row[f"{name}_ms"] = statistics.median(times) * 1e3
            if "ipc_ms" in row:
                row["speedup"] = row["host_ms"] / row["ipc_ms"]
            rows.append(row)
    finally:
        ours.send(None)
        receiver.join(timeout=30)
        if ring is not None:
            ring.close()
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| MiB | host path ms | CUDA IPC ms | speedup |", "|---|---|---|---|"]
    for r in rows:
        ipc = f"{r['ipc_ms']:.2f} | {r['speedup']:.1f}x" if "ipc_ms" in r else "- | -"
        lines.append(f"| {r['mib']} | {r['host_ms']:.2f} | {ipc} |")
    via = rows[0]["host_path"] if rows else "shared memory"
    return [f"hand-off of a bf16 tensor to a second process on the same card (host path via {via}):", *lines]
