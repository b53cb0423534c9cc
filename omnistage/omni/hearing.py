"""Audio inputs of the Qwen2.5-Omni thinker inside the AR engine.

Each clip becomes log-mel features (the checkpoint's Whisper feature extractor, as the
reference processor runs it: 16 kHz, up to 30 s), a number of LM positions (the audio tower
halves the frames twice), a content hash (prefix caching keys those positions on it) and, when
the positions must be computed, embeddings from the thinker's own audio tower. Placeholders:
the chat template writes one ``<|AUDIO|>`` per clip; ``ar_engine.multimodal.media_spans``
expands it to the clip's positions, next to any images and videos of the same prompt, and
M-RoPE positions come from the model's ``get_rope_index`` with the clips' frame counts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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
