"""The ranks of a tensor-parallel ``ar``/``prefill``/``decode`` replica (``resources.tensor_parallel``).

The replica's worker is rank 0: it starts ranks 1..N-1 as processes of its own (on its node,
under any launcher), joins their process group, and loads its shard; each other rank loads its
shard and follows rank 0's steps (``ar_engine.parallel``). On CUDA, rank r of a replica placed
on ``cuda:k`` uses ``cuda:k+r``. A rank exits when rank 0 says stop, when its group breaks, or
when the worker that started it is gone.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import torch
import torch.distributed as dist

from omnistage.ar_engine.memory import process_share
from omnistage.ar_engine.parallel import follow, follower_runner, init_group
from omnistage.graph.placement import rank_device
from omnistage.stages.kinds.ar_model import load_model

log = logging.getLogger("omnistage.worker")
PARENT_POLL_S = 1.0


def start_ranks(size: int, path: str, dtype: torch.dtype, device: str, threads: int) -> list[subprocess.Popen]:
    """Start ranks 1..size-1 and join the group as rank 0 (in this process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    # Rank 0 is capped at the bytes every rank of the replica gets (graph/gpu_budget.py): so are they.
    share = process_share(torch.device(device)) if device.startswith("cuda") else None
    held = None if share is None else int(share * torch.cuda.get_device_properties(torch.device(device)).total_memory)
    capped = ["--share-bytes", str(held)] if held is not None else []
    procs = [subprocess.Popen([sys.executable, "-m", __name__, "--address", address, "--rank", str(rank),
                               "--size", str(size), "--path", path, "--dtype", str(dtype).removeprefix("torch."),
                               "--device", rank_device(device, rank), "--threads", str(threads),
                               "--parent", str(os.getpid()), *capped])
             for rank in range(1, size)]
    atexit.register(_reap, procs)
    _use_device(device)
    init_group(address, 0, size, device)
    log.info("tensor parallel: %d ranks joined at %s", size, address)
    return procs


def _reap(procs: list[subprocess.Popen]) -> None:
    """At the worker's exit: the ranks end with their group; any that lingers is stopped."""
    deadline = time.monotonic() + 5.0
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _use_device(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


def _watch_parent(parent: int) -> None:
    """Exit when the worker that started this rank is gone (killed without a word)."""
    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                os._exit(0)
    threading.Thread(target=watch, name="omnistage-rank-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one rank (1..N-1) of a tensor-parallel replica")
    for name in ("address", "path", "dtype", "device"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("rank", "size", "threads", "parent"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--share-bytes", type=int, help="the bytes of its GPU this rank is capped at")
    args = parser.parse_args(argv)
    _watch_parent(args.parent)
    if args.threads:
        torch.set_num_threads(args.threads)
    _use_device(args.device)
    if args.share_bytes is not None:
        card = torch.device(args.device)
        torch.cuda.set_per_process_memory_fraction(args.share_bytes / torch.cuda.get_device_properties(card).total_memory,
                                                   card)
    init_group(args.address, args.rank, args.size, args.device)
    from omnistage.ar_engine.kernels import backend_for
    model = load_model(args.path, getattr(torch, args.dtype), args.device, tp_size=args.size)
    runner = follower_runner(model, backend_for(args.device), args.size)
    try:
        follow(runner)
    finally:
        _leave()


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
