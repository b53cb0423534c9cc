"""Image inputs for Qwen2-VL-family language models inside the AR engine.

Placeholders: the chat template writes one image token per image; it is expanded to as many
tokens as the vision tower yields for that image (grid t*h*w / merge^2). Those positions take
the image's embeddings and 3-row M-RoPE positions from the model's own ``get_rope_index``.
Embeddings are not computed here: spans carry the preprocessed item as their ``source``.
"""
from __future__ import annotations

from typing import Any

import torch

from omnistage.ar_engine.sequence import MediaSpan


def is_vision_language(model: Any) -> bool:
    return hasattr(getattr(model, "model", None), "get_rope_index") and hasattr(model.config, "image_token_id")


def expand_image_tokens(ids: list[int], image_token_id: int, counts: list[int]) -> tuple[list[int], list[int]]:
    """Repeat the i-th image token counts[i] times; returns the ids and each image's start."""
    out, starts, seen = [], [], 0
    for tok in ids:
        if tok == image_token_id:
            if seen >= len(counts):
                raise ValueError(f"the prompt has more image placeholders than the {len(counts)} image(s) given")
            starts.append(len(out))
            out.extend([image_token_id] * counts[seen])
            seen += 1
        else:
            out.append(tok)
    if seen != len(counts):
        raise ValueError(f"{len(counts)} image(s) given but the prompt has {seen} placeholder(s)")
    return out, starts


def image_spans(model: Any, ids: list[int], items: list[Any]) -> tuple[list[int], tuple[MediaSpan, ...], torch.Tensor, int]:
    """Expand placeholders for preprocessed images (``.tokens``, ``.hash``, ``.grid_thw``) and
    compute M-RoPE positions. Returns (token ids, spans, positions [3, len], text delta)."""
    ids, starts = expand_image_tokens(ids, model.config.image_token_id, [it.tokens for it in items])
    spans = tuple(MediaSpan(start, it.tokens, it.hash, grid_thw=it.grid_thw, source=it)
                  for start, it in zip(starts, items))
    grids = torch.tensor([it.grid_thw for it in items], dtype=torch.long)
    positions, delta = mrope_positions(model, ids, grids)
    return ids, spans, positions, delta


def mrope_positions(model: Any, ids: list[int], grid_thw: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    input_ids = torch.tensor([ids])
    token_types = (input_ids == model.config.image_token_id).int()
    positions, delta = model.model.get_rope_index(input_ids, token_types, image_grid_thw=grid_thw,
                                                  attention_mask=torch.ones_like(input_ids))
    return positions[:, 0].cpu(), int(delta.reshape(-1)[0])
