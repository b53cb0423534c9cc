"""Image inputs for Qwen2-VL-family language models inside the AR engine.

Placeholders: the chat template writes one image token per image; it is expanded to as many
tokens as the vision tower yields for that image (grid t*h*w / merge^2). Those positions take
the image's embeddings and 3-row M-RoPE positions from the model's own ``get_rope_index``.
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

from omnistage.ar_engine.sequence import MediaSpan


def is_vision_language(model: Any) -> bool:
    return hasattr(getattr(model, "model", None), "get_rope_index") and hasattr(model.config, "image_token_id")


def content_hash(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(grid_thw.tolist())).encode())
    h.update(pixel_values.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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


@torch.inference_mode()
def image_spans(model: Any, ids: list[int], pixel_values: torch.Tensor,
                grid_thw: torch.Tensor) -> tuple[list[int], tuple[MediaSpan, ...], torch.Tensor, int]:
    """Expand placeholders, encode the images and compute M-RoPE positions for one prompt.

    Returns (token ids, media spans, positions [3, len], text position delta after the prompt).
    """
    merge = model.model.visual.spatial_merge_size ** 2
    counts = (grid_thw.prod(-1) // merge).tolist()
    ids, starts = expand_image_tokens(ids, model.config.image_token_id, counts)
    features = model.model.get_image_features(pixel_values, grid_thw).pooler_output
    patches = torch.split(pixel_values, grid_thw.prod(-1).tolist())
    spans = tuple(MediaSpan(start, count, content_hash(p, g), embeds=f, grid_thw=tuple(g.tolist()))
                  for start, count, f, p, g in zip(starts, counts, features, patches, grid_thw))
    positions, delta = mrope_positions(model, ids, grid_thw)
    return ids, spans, positions, delta


def mrope_positions(model: Any, ids: list[int], grid_thw: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    input_ids = torch.tensor([ids])
    token_types = (input_ids == model.config.image_token_id).int()
    positions, delta = model.model.get_rope_index(input_ids, token_types, image_grid_thw=grid_thw,
                                                  attention_mask=torch.ones_like(input_ids))
    return positions[:, 0].cpu(), int(delta.reshape(-1)[0])
