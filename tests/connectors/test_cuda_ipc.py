"""CUDA IPC hand-off, the parts a CPU can check: the handle travels as a typed struct that
gives torch's rebuild exactly the arguments torch's reduce made; a stage is sent handles only
to tensors on its own card of its own node. (Opening a handle needs a GPU: benchmarks/gpu_check.py does it.)"""
import inspect
from dataclasses import dataclass

import msgspec
import pytest
import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor

from omnistage.connectors.cuda_ipc import REBUILD_ARGS, CudaHandle, from_reduced, rebuild_args
from omnistage.connectors.messages import Admit
from omnistage.connectors.transport import Peers
from omnistage.graph.compile import compile_text
from omnistage.stages.runtime.admission import admission_messages


def reduced(event):
    """Arguments as ``reduce_tensor`` gives them for a bf16 view into a shared CUDA block."""
    return (torch.Tensor, torch.Size([2, 3]), (3, 1), 4, torch.storage.TypedStorage, torch.bfloat16, 1,
            bytes(range(64)), 4096, 512, False, b"/torch_123_4567", 7, event, event is not None)


def test_the_handle_names_what_torchs_rebuild_takes():
    assert REBUILD_ARGS == tuple(inspect.signature(rebuild_cuda_tensor).parameters)


@pytest.mark.parametrize("event", [bytes(range(64, 128)), None])
def test_a_handle_crosses_the_wire_typed_and_rebuilds_with_the_reduced_arguments(event):
    args = reduced(event)
    wire = msgspec.msgpack.encode(from_reduced(args))
    back = msgspec.msgpack.Decoder(CudaHandle).decode(wire)
    assert rebuild_args(back, torch.bfloat16) == args
    assert back.dtype == "bfloat16" and back.shape == [2, 3] and back.device == 1
    assert b"torch" not in wire.replace(b"/torch_123_4567", b"")  # (no pickled class or dtype objects)


def test_only_a_stage_on_a_gpu_of_the_same_node_is_sent_handles():
    peers = Peers("node-a", None, 64 << 10, cuda_ipc=True)
    peers.learn("gpu-here", "node-a", "cuda:1")
    peers.learn("cpu-here", "node-a")
    peers.learn("gpu-there", "node-b", "cuda:1")
    assert [peers.encoder(a).ipc_device for a in ("gpu-here", "cpu-here", "gpu-there", "sink")] == ["cuda:1", None,
                                                                                                      None, None]
    off = Peers("node-a", None, 64 << 10, cuda_ipc=False)
    off.learn("gpu-here", "node-a", "cuda:1")
    assert off.encoder("gpu-here").ipc_device is None


@dataclass
class Replica:
    address: str
    node: str = ""
    device: str = "cpu"


def test_admission_tells_a_stage_the_card_each_of_its_destinations_runs_on():
    plan = compile_text("""
name: pd
models: {lm: {path: "tiny:qwen2"}}
stages:
  prefill: {kind: prefill, model: lm, inputs: {prompt: request.prompt}, resources: {device: "cuda:0"}}
  decode: {kind: decode, model: lm, inputs: {kv: prefill.kv}, outputs: {text: response.text},
           resources: {device: cuda}}
""", lambda ref, base: ref)
    route = plan.route_for({"prompt"})
    chosen = {"prefill": [Replica("p", device="cuda:0")], "decode": [Replica("d", device="cuda")]}
    admits = {a: m for a, m in admission_messages("r", route, chosen, {"prompt": "hi"}, {}, "sink")
              if isinstance(m, Admit)}
    assert [(d.address, d.device) for d in admits["p"].routes["kv"]] == [("d", "cuda:0")]  # ("cuda": the current card)
    assert [(d.address, d.device) for d in admits["d"].routes["text"]] == [("sink", "")]
