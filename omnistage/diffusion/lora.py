"""Per-request LoRA adapters of a diffusion stage.

Adapters are registered by name in the stage's options (``loras: {name: file or directory}``,
diffusers/PEFT LoRA safetensors, as ``load_lora_weights`` reads them) and loaded into the
pipeline's denoiser the first time a request names one, through diffusers' own
``load_lora_weights``; at most ``capacity`` stay loaded, the least recently used unloaded
first. A step whose requests name different adapters runs one model call per adapter (the
weights differ), requests of the same adapter and scale batched together; ``activate`` sets
the denoiser up for one such call. Only denoiser LoRAs are taken: a file with text-encoder
weights is refused when the stage starts (the stage's prompt embeddings are shared across
requests and cached, so they cannot follow a request's adapter).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

TEXT_ENCODER_PREFIXES = ("text_encoder", "lora_te", "te_", "te1_", "te2_")


def lora_file(path: str) -> Path:
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


def check_lora(name: str, path: str) -> None:
    """Refuse a LoRA the stage cannot apply per request (missing, or with text-encoder weights)."""
    with safe_open(str(lora_file(path)), "pt") as f:
        text = [k for k in f.keys() if k.startswith(TEXT_ENCODER_PREFIXES)]
    if text:
        raise ValueError(f"LoRA {name!r} ({path}) has text-encoder weights ({text[0]}, ...); a stage applies only "
                         "denoiser LoRAs per request")


class Adapters:
    def __init__(self, pipe: Any, files: Mapping[str, str], capacity: int) -> None:
        for name, path in files.items():
            check_lora(name, path)
        self.pipe, self.files, self.capacity = pipe, dict(files), capacity
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.loads = 0  # adapters loaded so far (a reload after eviction counts again)

    def activate(self, lora: tuple[str, float] | None) -> None:
        """Set the denoiser up for requests of adapter ``(name, scale)``, or of none."""
        if lora is None:
            if self.loaded:
                self.pipe.disable_lora()
            return
        name, scale = lora
        self._load(name)
        self.pipe.enable_lora()
        self.pipe.set_adapters([name], adapter_weights=[scale])

    def _load(self, name: str) -> None:
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return
        if len(self.loaded) >= self.capacity:
            evicted, _ = self.loaded.popitem(last=False)
            self.pipe.delete_adapters(evicted)
        path = lora_file(self.files[name])
        self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        self.loaded[name] = None
        self.loads += 1
