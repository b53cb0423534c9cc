"""Audio for Whisper-style encoders: log-mel features from the model's own feature extractor,
and the encoder tower, batched."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class AudioItem:
    samples: np.ndarray  # mono float32 at the extractor's sampling rate
    hash: str
    extractor: Any = field(default=None, repr=False)
    _features: torch.Tensor | None = field(default=None, repr=False)

    @property
    def features(self) -> torch.Tensor:
        """[mel bins, frames] log-mel features, padded or cut to the model's window."""
        if self._features is None:
            out = self.extractor(self.samples, sampling_rate=self.extractor.sampling_rate, return_tensors="pt")
            self._features = out["input_features"][0]
        return self._features


def prepare_audio(extractor: Any, clips: list[np.ndarray]) -> list[AudioItem]:
    settings = json.dumps(extractor.to_dict(), sort_keys=True, default=str).encode()
    items = []
    for samples in clips:
        h = hashlib.blake2b(digest_size=16)
        h.update(settings)
        h.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
        items.append(AudioItem(samples, h.hexdigest(), extractor))
    return items


class AudioTower:
    """A Whisper-style encoder: fixed-size mel windows, so a batch is a plain stack."""

    def __init__(self, model: Any) -> None:
        self.encoder = model.get_encoder()
        self.device = next(self.encoder.parameters()).device
        self.dtype = next(self.encoder.parameters()).dtype

    @torch.inference_mode()
    def encode(self, items: list[AudioItem]) -> list[torch.Tensor]:
        if not items:
            return []
        features = torch.stack([it.features for it in items]).to(self.device, self.dtype)
        return list(self.encoder(features).last_hidden_state)
