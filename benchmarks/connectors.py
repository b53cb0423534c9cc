"""Transfer throughput of each same-host transport against an in-process memcpy.

Two real processes: the sender ships a float32 tensor, the receiver decodes it (ending with
the tensor in its own memory) and answers a tiny ack; throughput = bytes / round-trip time.
Both sides send as serving does: through the Mailer (a sending thread per destination) into
the peer's Inbox.
Transports: zmq over tcp and over ipc (tensor as a zero-copy frame) and the shared-memory ring
(copy into a slot, small zmq notify, copy out). The physical limit is one memcpy of the same
size inside one process. Warm-up rounds are excluded everywhere.

    python benchmarks/connectors.py [--quick]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid

import torch
import zmq

from omnistage.connectors.messages import Data, Shutdown
from omnistage.connectors.shm import ShmRing, remove_segments, segment_name
from omnistage.connectors.mailer import Mailer
from omnistage.connectors.transport import Inbox, bind_address
from omnistage.connectors.wire import Decoder, Encoder

SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
TRANSPORTS = {"zmq-tcp": ("tcp", False), "zmq-ipc": ("ipc", False), "shm+ipc": ("ipc", True)}


def _receiver(protocol: str, run_dir: str, q: mp.Queue) -> None:
    torch.set_num_threads(1)
    ctx = zmq.Context()
    inbox = Inbox(ctx, bind_address(protocol, "127.0.0.1", run_dir, "bench-rx"), Decoder())
    mail = Mailer(ctx, lambda _address: Encoder())
    q.put(inbox.address)
    reply = q.get()
    while not isinstance(msg := inbox.recv(), Shutdown):
        mail.put(reply, Data(msg.rid, "ack", int(msg.value.numel())))
    mail.close()
    inbox.close()
    ctx.term()


def _rounds(size: int) -> int:
    return max(5, min(400, (512 << 20) // size))


def measure_transport(protocol: str, shm: bool, sizes: list[int]) -> dict[int, float]:
    run_dir, session = tempfile.mkdtemp(prefix="omnistage-bench-"), uuid.uuid4().hex[:8]
    ctx = zmq.Context()
    q = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_receiver, args=(protocol, run_dir, q))
    proc.start()
    ring = ShmRing(segment_name(session, "bench"), 4, max(sizes)) if shm else None
    inbox = Inbox(ctx, bind_address(protocol, "127.0.0.1", run_dir, "bench-tx"), Decoder())
    # Serving's send path: each destination's own sending thread, fed through a queue.
    mail = Mailer(ctx, lambda _address: Encoder(ring, shm_threshold=0 if shm else 1 << 62))
    out = {}
    try:
        peer = q.get(timeout=60)
        q.put(inbox.address)
        for size in sizes:
            tensor = torch.rand(size // 4)
            times = []
            for i in range(_rounds(size) + 3):
                start = time.perf_counter()
                mail.put(peer, Data("b", "x", tensor))
                ack = inbox.recv(timeout_ms=60_000)
                assert ack is not None and ack.value == tensor.numel()
                if i >= 3:  # warm-up excluded
                    times.append(time.perf_counter() - start)
            out[size] = size / statistics.median(times)
        mail.put(peer, Shutdown())
        proc.join(30)
    finally:
        mail.close()
        inbox.close()
        if ring is not None:
            ring.close()
        ctx.term()
        remove_segments(session)
    return out


def measure_memcpy(sizes: list[int]) -> dict[int, float]:
    torch.set_num_threads(1)
    out = {}
    for size in sizes:
        src, dst = torch.rand(size // 4), torch.empty(size // 4)
        times = []
        for i in range(_rounds(size) + 3):
            start = time.perf_counter()
            dst.copy_(src)
            if i >= 3:
                times.append(time.perf_counter() - start)
        out[size] = size / statistics.median(times)
    return out


def _fmt_size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer sizes (for a smoke run)")
    args = parser.parse_args()
    sizes = [4 << 10, 1 << 20, 64 << 20] if args.quick else SIZES
    memcpy = measure_memcpy(sizes)
    results = {name: measure_transport(proto, shm, sizes) for name, (proto, shm) in TRANSPORTS.items()}
    head = f"{'payload':>9} | {'memcpy GB/s':>11} | " + " | ".join(f"{n + ' GB/s (frac)':>22}" for n in results)
    print(head)
    print("-" * len(head))
    for size in sizes:
        cells = " | ".join(f"{r[size] / 1e9:>13.2f} ({r[size] / memcpy[size]:5.2f})" for r in results.values())
        print(f"{_fmt_size(size):>9} | {memcpy[size] / 1e9:>11.2f} | {cells}")
    big = max(sizes)
    best_same_host = max(r[big] for r in results.values())
    print(f"RESULT shm_frac={best_same_host / memcpy[big]:.3f} tcp_frac={results['zmq-tcp'][big] / memcpy[big]:.3f}")


if __name__ == "__main__":
    main()
