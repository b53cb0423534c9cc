"""What turns an embed stage's rows into vectors: a text model whose token states are pooled, or
a CLIP model's two towers (text and image in one space, each through its own projection).

Rows come as token-id lists (text) or RGB images; a tower takes a batch of one kind and gives
[rows, width] float vectors, not yet normalized.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from omnistage.checkpoints.pooling import Mode


class TextTower:
    """An encoder (BERT-style) or a decoder LM read through ``AutoModel``; its last hidden states
    pooled (mean, CLS or last token)."""

    images = False

    def __init__(self, model: Any, mode: Mode) -> None:
        self.model, self.mode = model, mode
        self.width = int(model.config.hidden_size)
        self.vocab = int(model.config.vocab_size)
        self.positions = getattr(model.config, "max_position_embeddings", None)

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pooled(states.float(), mask, self.mode)


class ClipTowers:
    """``CLIPModel``: text pooled at its end token and images at their class token, each projected
    into the shared space (``get_text_features`` / ``get_image_features``)."""

    images = True

    def __init__(self, model: Any, processor: Any) -> None:
        self.model, self.processor = model, processor
        self.width = int(model.config.projection_dim)
        self.vocab = int(model.config.text_config.vocab_size)
        self.positions = int(model.config.text_config.max_position_embeddings)

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output.float()

    def image(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        return self.model.get_image_features(pixel_values=pixels.to(self.model.device, dtype)).pooler_output.float()


def pooled(states: torch.Tensor, mask: torch.Tensor, mode: Mode) -> torch.Tensor:
    """[rows, tokens, hidden] states and their right-padded [rows, tokens] mask -> [rows, hidden]."""
    if mode == "cls":
        return states[:, 0]
    if mode == "last":
        return states[torch.arange(states.shape[0]), mask.sum(dim=1) - 1]
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
