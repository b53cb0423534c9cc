"""Where a stage's checkpoint comes from: generated tiny models or a directory / hub id."""
from __future__ import annotations

import torch

from omnistage.models.tiny import ensure_tiny

TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_dir(path: str) -> str:
    if path.startswith(TINY_PREFIX):
        return str(ensure_tiny(path[len(TINY_PREFIX):]))
    return path


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]
