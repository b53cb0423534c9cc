"""Where a stage's checkpoint comes from: generated tiny models or a directory / hub id."""
from __future__ import annotations

from pathlib import Path

import torch

from omnistage.models.tiny import ensure_tiny

TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_dir(path: str) -> str:
    """``tiny:<name>[/<sub-model dir>]`` -> its generated directory; anything else as it is."""
    if path.startswith(TINY_PREFIX):
        name, _, sub = path[len(TINY_PREFIX):].partition("/")
        root = ensure_tiny(name)
        return str(root / sub) if sub else str(root)
    return path


def torch_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def preprocessor_dir(model_dir: str, marker: str, subdir: str = "") -> str | Path:
    """The directory of a preprocessor whose ``preprocessor_config.json`` holds ``marker``: the
    model's own, ``subdir`` beside or inside it, or the full checkpoint above it (a Qwen2.5-Omni
    thinker saved as a sub-model); else ``model_dir`` as given (a hub id)."""
    here = Path(model_dir)
    subdirs = (here / subdir, here.parent / subdir) if subdir else ()
    for candidate in (*subdirs, here, here.parent):
        config = candidate / "preprocessor_config.json"
        if config.exists() and marker in config.read_text():
            return candidate
    return model_dir


def processor_dir(model_dir: str) -> str | Path:
    """The image processor's directory."""
    return preprocessor_dir(model_dir, "patch_size")


def feature_extractor_dir(model_dir: str) -> str | Path:
    """The audio feature extractor's directory (``audio/`` in the tiny Qwen2.5-Omni)."""
    return preprocessor_dir(model_dir, "feature_size", subdir="audio")
