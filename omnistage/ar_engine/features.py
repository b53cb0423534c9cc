"""Config features of a text model that change its attention or logits and that the paged
engine does not implement: a checkpoint using one is refused at validate time instead of
answering wrongly. Pure Python (a config as read from config.json); no torch."""
from __future__ import annotations

from typing import Any


def text_part(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it)."""
    if "thinker_config" in config:
        config = config["thinker_config"]
    return config.get("text_config") or config


def unsupported_features(config: dict[str, Any]) -> list[str]:
    text = text_part(config)
    found = []
    if text.get("sliding_window") and text.get("use_sliding_window", True):
        found.append("sliding_window (sliding-window attention)")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if text.get(key):
            found.append(f"{key} (logit softcapping)")
    return found
