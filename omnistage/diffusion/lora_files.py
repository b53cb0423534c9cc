"""LoRA files a diffusion stage registers (``options.loras``), checked when the graph is
validated: the file exists (a relative path is taken from the graph file's directory) and holds
no text-encoder weights. Reads only the safetensors header, without torch."""
from __future__ import annotations

import json
import struct
from pathlib import Path

TEXT_ENCODER_PREFIXES = ("text_encoder", "lora_te", "te_", "te1_", "te2_")


def lora_file(path: str | Path) -> Path:
    """The LoRA safetensors file a registered path names (a file, or a directory with one)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"LoRA directory {path} holds {len(files)} .safetensors files; name the file")
        return files[0]
    if not p.is_file():
        raise ValueError(f"LoRA file {path} does not exist")
    return p


MAX_HEADER = 100 << 20  # (safetensors' own limit)


def tensor_names(path: Path) -> list[str]:
    """The tensor names in a safetensors file's header."""
    with open(path, "rb") as f:
        size = f.read(8)
        length = struct.unpack("<Q", size)[0] if len(size) == 8 else -1
        if not 0 < length <= MAX_HEADER:
            raise ValueError(f"{path} is not a safetensors file (no header)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not a safetensors file: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (its header is not a table)")
    return [name for name in header if name != "__metadata__"]


def check_lora(name: str, path: str | Path) -> Path:
    """The LoRA's file; refused if missing or with text-encoder weights (the stage applies only
    denoiser LoRAs per request: prompt embeddings are shared and cached)."""
    file = lora_file(path)
    text = [k for k in tensor_names(file) if k.startswith(TEXT_ENCODER_PREFIXES)]
    if text:
        raise ValueError(f"LoRA {name!r} ({path}) has text-encoder weights ({text[0]}, ...); a stage applies only "
                         "denoiser LoRAs per request")
    return file


def resolve_loras(loras: dict[str, str], base_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> absolute path, name -> why refused), relative paths taken from ``base_dir``."""
    resolved, refused = {}, {}
    for name, path in loras.items():
        full = Path(path).expanduser()
        full = full if full.is_absolute() else base_dir / full
        try:
            check_lora(name, full)
        except (ValueError, OSError) as exc:
            refused[name] = str(exc)
            continue
        resolved[name] = str(full.resolve())
    return resolved, refused
