"""A CUDA tensor handed to a process on the same host without the host: its CUDA IPC handle.

The sender exports the tensor's allocation (``torch.multiprocessing.reductions.reduce_tensor``:
the allocation's IPC handle, the producer's reference counter and the event that orders the
receiver after the producer's stream) and sends those plain fields as a typed struct in the
wire format, never pickled. The receiver opens the handle (``rebuild_cuda_tensor``: it waits on
the event) and copies the tensor into memory of its own on the same card, so the producer's
block is released at once, whatever the receiver does with the value. Only a receiver on the
tensor's own card is sent handles (``wire.Encoder``): opening one from another card would make
a CUDA context on the sender's card.

The producer keeps a sent block alive until every receiver has let go of it (torch's
sent-data limbo): its process must live until then, as a stage worker does.
"""
from __future__ import annotations

from typing import Any

import msgspec
import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

# The arguments of ``rebuild_cuda_tensor`` that ``reduce_tensor`` produces, in order.
REBUILD_ARGS = ("tensor_cls", "tensor_size", "tensor_stride", "tensor_offset", "storage_cls", "dtype",
                "storage_device", "storage_handle", "storage_size_bytes", "storage_offset_bytes", "requires_grad",
                "ref_counter_handle", "ref_counter_offset", "event_handle", "event_sync_required")


class CudaHandle(msgspec.Struct, array_like=True):
    """What the receiver needs to open a tensor another process holds on a GPU of this host."""

    dtype: str
    shape: list[int]
    stride: list[int]
    offset: int  # the tensor's offset into its storage, in elements
    device: int  # the card's index
    handle: bytes  # the allocation's cudaIpcMemHandle
    storage_bytes: int
    storage_offset_bytes: int  # where the storage starts in the allocation
    ref_counter_handle: bytes  # the producer's counter of receivers holding the block
    ref_counter_offset: int
    event_handle: bytes | None  # the event the receiver waits on before reading
    event_sync_required: bool


def export(tensor: torch.Tensor) -> CudaHandle:
    """``tensor`` (on a GPU) as a handle another process on this host can open."""
    _, args = reduce_tensor(tensor.detach())
    return from_reduced(args)


def from_reduced(args: tuple[Any, ...]) -> CudaHandle:
    """The handle for ``reduce_tensor``'s arguments to ``rebuild_cuda_tensor``."""
    a = dict(zip(REBUILD_ARGS, args, strict=True))
    return CudaHandle(str(a["dtype"]).removeprefix("torch."), list(a["tensor_size"]), list(a["tensor_stride"]),
                      a["tensor_offset"], int(a["storage_device"]), bytes(a["storage_handle"]),
                      a["storage_size_bytes"], a["storage_offset_bytes"], bytes(a["ref_counter_handle"]),
                      a["ref_counter_offset"], None if a["event_handle"] is None else bytes(a["event_handle"]),
                      bool(a["event_sync_required"]))


def rebuild_args(h: CudaHandle, dtype: torch.dtype) -> tuple[Any, ...]:
    """``rebuild_cuda_tensor``'s arguments for the handle (``dtype``: the torch dtype of ``h.dtype``)."""
    return (torch.Tensor, torch.Size(h.shape), tuple(h.stride), h.offset, torch.storage.TypedStorage, dtype,
            h.device, h.handle, h.storage_bytes, h.storage_offset_bytes, False, h.ref_counter_handle,
            h.ref_counter_offset, h.event_handle, h.event_sync_required)


def open_handle(h: CudaHandle, dtype: torch.dtype) -> torch.Tensor:
    """The tensor, copied into this process's memory on its card (the producer's block is let go)."""
    shared = rebuild_cuda_tensor(*rebuild_args(h, dtype))
    own = shared.clone()
    # The copy must be done before the producer's block is let go: the producer may reuse it at once.
    torch.cuda.current_stream(shared.device).synchronize()
    del shared
    return own
