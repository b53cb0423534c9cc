"""Where a worker loads a stage's checkpoint from, in what dtype, and where its preprocessors are."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omnistage.checkpoints.files import local_dir, local_snapshot, read_json
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


def component_kwargs(path: str, component: str | None) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the sub-model ``component`` of a checkpoint holding
    several (its ``<component>_config`` and the weights under ``<component>.``); none without one."""
    if component is None:
        return {}
    from transformers import AutoConfig
    return {"config": getattr(AutoConfig.from_pretrained(path), f"{component}_config"),
            "key_mapping": {rf"^{component}\.": ""}}


def torch_dtype(name: str, path: str, device: str, half_on_gpu: bool = False) -> torch.dtype:
    """``auto``: the checkpoint's own dtype (``dtype``/``torch_dtype`` of its config, or of a
    diffusers pipeline's denoiser weights), float32 where it says none; float16 becomes bfloat16
    on a CPU (as vLLM does: CPUs compute bfloat16, not float16, at speed). With ``half_on_gpu``
    (the diffusion kinds), float32 becomes bfloat16 on a GPU: diffusion pipelines are run in half
    precision there, and an fp32 checkpoint would take twice the memory and tensor-core time.
    Else the dtype named."""
    if name != "auto":
        return DTYPES[name]
    dtype = DTYPES.get(checkpoint_dtype(path) or "", torch.float32)
    gpu = device.startswith("cuda")
    if dtype == torch.float16 and not gpu or dtype == torch.float32 and gpu and half_on_gpu:
        return torch.bfloat16
    return dtype


def checkpoint_dtype(path: str) -> str | None:
    """The dtype a checkpoint was saved in (None: not recorded). A hub id is read from the hub
    cache (``omnistage serve`` fetches it first)."""
    directory = local_dir(path) or local_snapshot(path)
    if directory is None:
        return None
    index = read_json(str(directory), "model_index.json")
    if index is not None:
        part = next((p for p in ("transformer", "unet") if p in index), None)
        return checkpoint_dtype(str(directory / part)) if part else None
    config = read_json(str(directory), "config.json") or {}
    if "thinker_config" in config:
        config = config["thinker_config"]
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    if name:
        return str(name)
    weights = sorted(directory.glob("diffusion_pytorch_model*.safetensors"))
    return _safetensors_dtype(weights[0]) if weights else None


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
