"""Audio inputs of the Qwen2.5-Omni thinker inside the AR engine.

Each clip becomes log-mel features (the checkpoint's Whisper feature extractor, as the
reference processor runs it: 16 kHz, up to 30 s), a number of LM positions (the audio tower
halves the frames twice), a content hash (prefix caching keys those positions on it) and, when
the positions must be computed, embeddings from the thinker's own audio tower. Placeholders:
the chat template writes one ``<|AUDIO|>`` per clip; it is expanded to the clip's positions,
and M-RoPE positions come from the model's ``get_rope_index`` with the clips' frame counts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from omnistage.ar_engine.multimodal import mrope_positions
from omnistage.ar_engine.sequence import MediaSpan

HEARING_FAMILIES = frozenset({"qwen2_5_omni_thinker"})


@dataclass
class OmniAudioItem:
    features: torch.Tensor  # [mel bins, frames], the clip's frames only
    tokens: int  # LM positions
    hash: str


def hears(model: Any) -> bool:
    return model.config.model_type in HEARING_FAMILIES


def output_tokens(frames: int) -> int:
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def prepare_omni_audio(extractor: Any, clips: list[np.ndarray]) -> list[OmniAudioItem]:
    out = extractor(clips, sampling_rate=extractor.sampling_rate, padding="max_length", return_attention_mask=True,
                    return_tensors="pt")
    items = []
    for clip, feats, mask in zip(clips, out.input_features, out.attention_mask):
        frames = int(mask.sum())
        digest = hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()
        items.append(OmniAudioItem(feats[:, :frames].clone(), output_tokens(frames), "audio:" + digest))
    return items


def audio_spans(model: Any, ids: list[int], items: list[OmniAudioItem]) -> tuple[list[int], tuple[MediaSpan, ...],
                                                                              torch.Tensor, int]:
    """Expand the audio placeholders; (ids, spans, M-RoPE positions [3, len], delta)."""
    token = model.config.audio_token_id
    queue, out, spans = list(items), [], []
    for tok in ids:
        if tok != token:
            out.append(tok)
            continue
        if not queue:
            raise ValueError(f"the prompt has more audio placeholders than the {len(items)} clip(s) given")
        item = queue.pop(0)
        spans.append(MediaSpan(len(out), item.tokens, item.hash, source=item))
        out.extend([token] * item.tokens)
    if queue:
        raise ValueError(f"{len(queue)} audio clip(s) given without a placeholder in the prompt")
    frames = torch.tensor([it.features.shape[1] for it in items], dtype=torch.long)
    positions, delta = mrope_positions(model, out, None, audio_frames=frames)
    return out, tuple(spans), positions, delta


class OmniAudioTower:
    """The thinker's audio encoder; several clips in one forward."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def encode(self, items: list[OmniAudioItem]) -> list[torch.Tensor]:
        width = max(it.features.shape[1] for it in items)
        feats = torch.zeros(len(items), items[0].features.shape[0], width)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for i, it in enumerate(items):
            feats[i, :, :it.features.shape[1]] = it.features
            mask[i, :it.features.shape[1]] = 1
        dtype = next(self.model.model.audio_tower.parameters()).dtype
        out = self.model.get_audio_features(feats.to(self.device, dtype), feature_attention_mask=mask.to(self.device))
        return list(torch.split(out.last_hidden_state, [it.tokens for it in items]))
