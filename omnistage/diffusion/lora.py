"""Per-request LoRA adapters of a diffusion stage.

Adapters are registered by name in the stage's options (``loras: {name: file or directory}``,
diffusers/PEFT LoRA safetensors, as ``load_lora_weights`` reads them) and loaded into the
pipeline's denoiser the first time a request names one, through diffusers' own
``load_lora_weights``; at most ``capacity`` stay loaded, the least recently used unloaded
first. A step whose requests name different adapters runs one model call per adapter (the
weights differ), requests of the same adapter and scale batched together; ``activate`` sets
the denoiser up for one such call. Only denoiser LoRAs are taken: a file with text-encoder
weights is refused when the graph is validated and again when the stage starts
(``lora_files.py``: the stage's prompt embeddings are shared across requests and cached, so they
cannot follow a request's adapter).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from omnistage.diffusion.lora_files import check_lora, lora_file


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
