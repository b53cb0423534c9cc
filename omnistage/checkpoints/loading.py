"""Where a worker loads a stage's checkpoint from, in what dtype, and where its preprocessors are."""
from __future__ import annotations

from pathlib import Path

import torch

from omnistage.checkpoints.refs import parse_tiny
from omnistage.models.tiny import ensure_tiny

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_dir(ref: str) -> str:
    """A resolved reference (see ``refs.resolve_model``) -> what ``from_pretrained`` takes: a tiny
    checkpoint's directory (built on first use), else the directory or hub id as it is."""
    tiny = parse_tiny(ref)
    if tiny is None:
        return ref
    root = ensure_tiny(tiny.name)
    return str(root / tiny.sub) if tiny.sub else str(root)


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
