"""A graph on one Ray node against the same graph spread over three, and the cost of a cross-node
edge, on a Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``: one raylet per
node, all on this host).

1. Serving: encode -> prefill -> decode (tiny Qwen2-VL, one picture per request) on the Ray
   launcher, every stage pinned to one node, then each stage on its own node (the picture's
   embeddings and the prompt's KV cross nodes as ZeroMQ frames over TCP instead of shared
   memory). The same requests arrive at once on both; warm-up requests excluded. Requests/s and
   latency percentiles.
2. An edge: a tensor from one process to another, as shared memory plus a ZeroMQ notice (what
   two stages of one node use) and as ZeroMQ frames over TCP (what stages on two nodes use),
   through the same Mailer and Inbox serving uses (``benchmarks/connectors.py``), 64 KiB-64 MiB.

What one machine can show: that spreading works, and what the TCP path costs in copies and
framing. What it cannot: the simulated nodes share this machine's two cores and its loopback, so
spreading adds no compute (a ratio near 1 is the expected result, not a finding about real
clusters), and loopback TCP has none of a network's bandwidth limit or latency.

    python benchmarks/scale_out.py [--requests 64] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.connectors import measure_transport  # noqa: E402

NODES = ("node_a", "node_b", "node_c")
EDGE_SIZES = [64 << 10, 1 << 20, 16 << 20, 64 << 20]


def graph(address: str, placement: dict[str, str], out: Path) -> Path:
    config = yaml.safe_load((ROOT / "examples" / "vl_chat_epd.yaml").read_text())
    config["launcher"] = {"kind": "ray", "address": address}
    for stage, node in placement.items():
        config["stages"][stage]["resources"] = {"ray_resources": {node: 1}, "threads": 1}
    out.write_text(yaml.safe_dump(config))
    return out


def requests(n: int) -> list[dict]:
    import io

    import torch
    from PIL import Image
    out = []
    for i in range(n):
        pixels = (torch.rand(56, 84, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        content = [{"type": "image"}, {"type": "text", "text": f"What is in picture {i}?"}]
        out.append(dict(messages=[{"role": "user", "content": content}], images=[buf.getvalue()],
                        temperature=0, max_tokens=32, ignore_eos=True))
    return out


def serve_run(path: Path, batch: list[dict]) -> dict[str, float]:
    from omnistage import Pipeline
    with Pipeline.from_yaml(path) as pipe:
        for h in [pipe.submit(**r) for r in requests(4)]:  # warm-up
            h.result(300)
        start = time.perf_counter()
        handles = [(pipe.submit(**r), time.perf_counter()) for r in batch]
        latencies = []
        for handle, sent in handles:
            handle.result(600)
            latencies.append(time.perf_counter() - sent)
        wall = time.perf_counter() - start
        nodes = len({r.node for r in pipe.orchestrator.table.all()})
    latencies.sort()
    return {"nodes": nodes, "rps": len(batch) / wall, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def serving(n: int) -> dict[str, dict[str, float]]:
    import ray
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "resources": {NODES[0]: 8}})
    for name in NODES[1:]:
        cluster.add_node(num_cpus=4, resources={name: 8})
    cluster.wait_for_nodes()
    tmp = Path(tempfile.mkdtemp(prefix="omnistage-scale-"))
    batch = requests(n)
    try:
        one = serve_run(graph(cluster.address, dict.fromkeys(("vision", "prefill", "decode"), NODES[0]),
                              tmp / "one.yaml"), batch)
        spread = serve_run(graph(cluster.address, dict(zip(("vision", "prefill", "decode"), NODES)),
                                 tmp / "spread.yaml"), batch)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"one node": one, "three nodes": spread}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="8 requests, two edge sizes (a smoke run)")
    args = parser.parse_args()
    n = 8 if args.quick else args.requests
    sizes = [64 << 10, 16 << 20] if args.quick else EDGE_SIZES
    runs = serving(n)
    print(f"Serving: encode -> prefill -> decode, tiny Qwen2-VL, {n} requests at once (a picture each, "
          "32 tokens out), Ray launcher, simulated nodes on one 2-core machine")
    print(f"{'placement':>12} | {'nodes':>5} | {'req/s':>6} | {'p50 s':>6} | {'p99 s':>6}")
    for name, r in runs.items():
        print(f"{name:>12} | {r['nodes']:>5} | {r['rps']:>6.2f} | {r['p50']:>6.2f} | {r['p99']:>6.2f}")
    shm = measure_transport("ipc", True, sizes)
    tcp = measure_transport("tcp", False, sizes)
    print("\nAn edge: one tensor from one process to another (median round trip; GB/s)")
    print(f"{'payload':>9} | {'same node: shm':>14} | {'cross node: TCP frames':>22} | {'TCP / shm':>9}")
    for size in sizes:
        label = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
        print(f"{label:>9} | {shm[size] / 1e9:>14.2f} | {tcp[size] / 1e9:>22.2f} | {tcp[size] / shm[size]:>9.2f}")
    at = 16 << 20
    print(f"RESULT cross_node_frac={tcp[at] / shm[at]:.3f} "
          f"spread_rps_ratio={runs['three nodes']['rps'] / runs['one node']['rps']:.3f}")


if __name__ == "__main__":
    main()
