"""Exact speed-ups of the reference token2wav modules, for the vocoder stage.

Each computes what the transformers module computes, with less work on a CPU: the DiT's
speaker encoding once per ODE solve, its block masks once per evaluation, BigVGAN's
anti-aliasing filters with the batch folded into the depthwise groups and their edge padding
copied instead of taking the slow replication-pad kernel, and its Snake activations in place.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (Qwen2_5OmniDownSample1d, Qwen2_5OmniSnakeBeta,
                                                                    Qwen2_5OmniUpSample1d)


class _Encoded(torch.nn.Module):
    """Stands in for the DiT's speaker encoder during one solve: its input (the reference mel)
    is the same at every ODE evaluation, so its output is computed once."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, reference: torch.Tensor) -> torch.Tensor:
        assert reference.shape[0] == self.value.shape[0]
        return self.value


@contextmanager
def block_masks_unexpanded(dit: Any) -> Iterator[None]:
    """The DiT's block distances as one [1, 1, T, T] matrix instead of a view expanded to every
    row and head: each layer's mask is then computed once per evaluation, not per row and head
    (attention broadcasts it; the values are the same)."""
    def block_diff(hidden_states: torch.Tensor) -> torch.Tensor:
        blocks = torch.arange(hidden_states.shape[1], device=hidden_states.device) // dit.block_size
        return (blocks[None, :] - blocks[:, None])[None, None]
    dit._create_block_diff = block_diff
    try:
        yield
    finally:
        del dit._create_block_diff


@contextmanager
def speaker_encoded_once(input_embed: Any, reference: torch.Tensor) -> Iterator[None]:
    encoder = input_embed.spk_encoder
    input_embed.spk_encoder = _Encoded(encoder(reference))
    try:
        yield
    finally:
        input_embed.spk_encoder = encoder


def fast_bigvgan(bigvgan: Any) -> None:
    """BigVGAN's anti-aliasing filters run one filter over every channel as a depthwise
    convolution of ``channels`` groups; with few channels and long signals that takes a slow
    path on CPU. Folding the batch into the groups (``rows x channels`` groups of one row) is the
    same arithmetic, output for output, and several times faster there. Its Snake activations
    reuse one buffer for their intermediate values instead of allocating four (same values)."""
    for module in bigvgan.modules():
        if isinstance(module, Qwen2_5OmniUpSample1d):
            module.forward = _upsample.__get__(module)
        elif isinstance(module, Qwen2_5OmniDownSample1d):
            module.forward = _downsample.__get__(module)
        elif isinstance(module, Qwen2_5OmniSnakeBeta):
            module.forward = _snake.__get__(module)


def _snake(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """``x + 1 / (exp(beta) + eps) * sin(x * exp(alpha)) ** 2``, in the reference's order of operations."""
    alpha = torch.exp(self.alpha)[None, :, None]
    inverse = 1.0 / (torch.exp(self.beta)[None, :, None] + self.no_div_by_zero)
    wave = torch.sin(hidden_states * alpha)
    return wave.mul_(wave).mul_(inverse).add_(hidden_states)


def _replicate_pad(hidden_states: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """``F.pad(..., mode="replicate")`` on the last axis, value for value; on CPU that kernel is
    about ten times slower than copying the edge samples."""
    edge = hidden_states.shape[:-1]
    return torch.cat([hidden_states[..., :1].expand(*edge, left), hidden_states,
                      hidden_states[..., -1:].expand(*edge, right)], dim=-1)


def _upsample(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    rows, channels, _ = hidden_states.shape
    padded = _replicate_pad(hidden_states, self.pad, self.pad).reshape(1, rows * channels, -1)
    out = self.ratio * F.conv_transpose1d(padded, self.filter.expand(rows * channels, -1, -1), stride=self.stride,
                                          groups=rows * channels)
    return out.reshape(rows, channels, -1)[..., self.pad_left:-self.pad_right]


def _downsample(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    rows, channels, _ = hidden_states.shape
    padded = _replicate_pad(hidden_states, self.pad_left, self.pad_right).reshape(1, rows * channels, -1)
    out = F.conv1d(padded, self.filter.expand(rows * channels, -1, -1), stride=self.stride, groups=rows * channels)
    return out.reshape(rows, channels, -1)
