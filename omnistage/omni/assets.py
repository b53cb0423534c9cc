"""Files a Qwen2.5-Omni stage needs besides its own sub-model: the speakers (``spk_dict.pt``) and
a few rows of the thinker's token embedding (the talker embeds its text markers with it)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

SPEAKERS_FILE = "spk_dict.pt"
EMBEDDING_KEYS = ("model.embed_tokens.weight", "thinker.model.embed_tokens.weight")


def find_near(model_dir: str | Path, name: str) -> Path:
    """``name`` in a sub-model's directory or in the full checkpoint above it."""
    here = Path(model_dir)
    for candidate in (here / name, here.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {name} in {here} or {here.parent}")


def load_speakers(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Speaker name -> {bos_token, cond, ref_mel}, as the released checkpoint ships them."""
    speakers = torch.load(find_near(model_dir, SPEAKERS_FILE), weights_only=True)
    if not speakers:
        raise ValueError(f"{SPEAKERS_FILE} near {model_dir} holds no speakers")
    return dict(speakers)


def thinker_dir(talker_dir: str | Path, configured: str | None) -> Path:
    """The thinker's weights: as configured, else ``thinker/`` beside the talker, else the full
    checkpoint the talker directory sits in."""
    if configured:
        return Path(configured)
    here = Path(talker_dir)
    sibling = here.parent / "thinker"
    return sibling if sibling.is_dir() else here.parent


def embedding_rows(checkpoint: str | Path, ids: list[int]) -> torch.Tensor:
    """Rows ``ids`` of the thinker's token embedding, read from its safetensors without loading
    the rest ([len(ids), hidden], float32)."""
    for file in _weight_files(Path(checkpoint)):
        with safe_open(str(file), "pt") as weights:
            key = next((k for k in EMBEDDING_KEYS if k in weights.keys()), None)
            if key is not None:
                table = weights.get_slice(key)
                return torch.stack([table[i:i + 1][0] for i in ids]).float()
    raise FileNotFoundError(f"no thinker token embedding ({' or '.join(EMBEDDING_KEYS)}) in {checkpoint}")


def _weight_files(checkpoint: Path) -> list[Path]:
    index = checkpoint / "model.safetensors.index.json"
    if index.exists():
        mapping = json.loads(index.read_text())["weight_map"]
        return [checkpoint / mapping[k] for k in EMBEDDING_KEYS if k in mapping]
    return sorted(checkpoint.glob("*.safetensors"))
