"""Where a worker loads a stage's checkpoint from, in what dtype, and where its preprocessors are."""
from __future__ import annotations

from pathlib import Path

import torch

from omnistage.checkpoints.files import local_dir, read_json
from omnistage.checkpoints.packaged import ensure_packaged, parse_packaged
from omnistage.checkpoints.refs import parse_tiny
from omnistage.models.tiny import ensure_tiny

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_dir(ref: str) -> str:
    """A resolved reference (see ``refs.resolve_model``) -> what ``from_pretrained`` takes: a tiny
    checkpoint's directory (built on first use), else the directory or hub id as it is."""
    packaged = parse_packaged(ref)
    if packaged is not None:
        return str(ensure_packaged(packaged))
    tiny = parse_tiny(ref)
    if tiny is None:
        return ref
    root = ensure_tiny(tiny.name)
    return str(root / tiny.sub) if tiny.sub else str(root)


def torch_dtype(name: str, path: str) -> torch.dtype:
    """``auto``: the checkpoint's own dtype (``dtype``/``torch_dtype`` of its config, or of a
    diffusers pipeline's denoiser), float32 where it says none; else the dtype named."""
    if name != "auto":
        return DTYPES[name]
    return DTYPES.get(checkpoint_dtype(path) or "", torch.float32)


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a checkpoint was saved in, as its config names it (None: not recorded)."""
    index = read_json(path, "model_index.json")
    if index is not None:
        for part in ("transformer", "unet"):
            if part in index:
                return checkpoint_dtype(str(Path(path) / part)) if local_dir(path) else None
        return None
    config = read_json(path, "config.json") or {}
    if "thinker_config" in config:
        config = config["thinker_config"]
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    if name is None and (Path(path) / "diffusion_pytorch_model.safetensors").exists():
        return _safetensors_dtype(Path(path) / "diffusion_pytorch_model.safetensors")
    return str(name) if name else None


_SAFETENSORS = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _safetensors_dtype(path: Path) -> str | None:
    """The dtype of the first floating tensor in a safetensors file's header (no weights read)."""
    import json
    import struct
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    for key, entry in header.items():
        if key != "__metadata__" and entry.get("dtype") in _SAFETENSORS:
            return _SAFETENSORS[entry["dtype"]]
    return None


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
