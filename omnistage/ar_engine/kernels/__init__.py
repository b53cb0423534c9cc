"""Accelerated attention backends. Triton kernels on CUDA; elsewhere the torch reference in
``omnistage.ar_engine.attention`` runs (``backend_for`` returns None)."""
from __future__ import annotations

from typing import Any

import torch


def backend_for(device: str) -> Any:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    from omnistage.ar_engine.kernels.triton_attention import TritonBackend
    return TritonBackend()
