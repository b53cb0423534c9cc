"""omnistage: serve any-to-any multimodal models as a graph of independently batched stages."""
from __future__ import annotations

from typing import Any

__all__ = ["Pipeline"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``omnistage.Pipeline`` is imported on first use, so that importing a light part of the
    # package (``omnistage validate`` compiling a graph) does not import torch and the runtime.
    if name == "Pipeline":
        from omnistage.pipeline import Pipeline
        return Pipeline
    raise AttributeError(f"module 'omnistage' has no attribute {name!r}")
