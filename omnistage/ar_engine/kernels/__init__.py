"""Accelerated attention backends, selected per device: Triton kernels on CUDA, the compiled
kernel of ``cpu_attention`` on a CPU. Where neither is available ``backend_for`` returns None and
the torch reference in ``omnistage.ar_engine.attention`` runs."""
from __future__ import annotations

from typing import Any

import torch


def backend_for(device: str) -> Any:
    if device == "cpu" or device.startswith("cpu:"):
        from omnistage.ar_engine.kernels.cpu_attention import cpu_backend
        return cpu_backend()
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    from omnistage.ar_engine.kernels.triton_attention import TritonBackend
    return TritonBackend()
