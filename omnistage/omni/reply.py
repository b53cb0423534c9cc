"""The talker's input embeddings, built from the thinker's streamed states.

Qwen2.5-Omni's reference ``generate`` builds them once the thinker has finished; here they grow
while it decodes. With P prompt positions and rows ``h + e`` (thinker hidden state plus input
embedding) per thinker position, talker position p takes:

    p < P        the prompt row p (embedding zeroed where a media placeholder stands); no codec token
    p = P        the speaker's text-start embedding, plus the codec pad token's (*)
    p = P + 1    the row of the first generated token, plus the codec start token's (*)
    p = P + 1 + k  the row of generated token k, plus the embedding of the codec token sampled last;
                 after the thinker's last row, its text-end embedding once, then text-pad forever

The thinker's last token never gets a row (it is not fed back), as in the reference.

(*) The reference adds these two codec embeddings only when the talker is given an attention
mask; in transformers 5 ``generate`` drops an all-ones mask, so one unpadded request goes without
them while a padded batch gets them. ``codec_start=False`` reproduces the former (the talker
stage's ``reference_unpadded`` option).
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

UNBOUNDED = 1 << 30


class StatesDelta(Protocol):
    """One delta of a thinker's streamed states (``connectors.messages.ThinkerStates`` on the wire):
    rows [positions, hidden] of last-layer hidden states and input embeddings; the first delta
    also carries the prompt (ids, M-RoPE positions and offset)."""

    hidden: torch.Tensor | None
    embeds: torch.Tensor | None
    prompt: list[int] | None
    mrope: torch.Tensor | None
    mrope_delta: int


class ThinkerReply:
    def __init__(self, text_bos: torch.Tensor, text_eos: torch.Tensor, text_pad: torch.Tensor,
                 media_ids: frozenset[int], codec_start: bool = True) -> None:
        self.text_bos, self.text_eos, self.text_pad = text_bos, text_eos, text_pad
        self.codec_start = codec_start
        self.media_ids = media_ids
        self.states: list[torch.Tensor] = []  # one [hidden] row per thinker position
        self.prompt: list[int] | None = None
        self.mrope: Any = None
        self.mrope_delta = 0
        self.ended = False

    # --- fed by the thinker ----------------------------------------------------------------
    def push(self, state: StatesDelta) -> None:
        embeds, hidden = state.embeds, state.hidden
        if embeds is None or hidden is None:
            raise ValueError("thinker states without hidden states and input embeddings: the thinker stage "
                             "must set options.hidden_states: all")
        if state.prompt is not None:
            self.prompt = list(state.prompt)
            self.mrope, self.mrope_delta = state.mrope, state.mrope_delta
            if len(self.states) + embeds.shape[0] < len(self.prompt):
                raise ValueError(f"the thinker sent {embeds.shape[0]} prompt states for {len(self.prompt)} prompt "
                                 "tokens: it must compute every prompt position (hidden_states: all)")
            media = torch.tensor([t in self.media_ids for t in self.prompt[:embeds.shape[0]]])
            embeds = embeds.masked_fill(media[:, None].to(embeds.device), 0.0)
        self.states.extend(hidden + embeds)

    def end(self) -> None:
        self.ended = True

    @property
    def prompt_len(self) -> int:
        return -1 if self.prompt is None else len(self.prompt)

    @property
    def generated(self) -> int:
        """Rows of generated tokens received so far."""
        return max(0, len(self.states) - max(self.prompt_len, 0))

    # --- read by the AR engine (sequence.FedInputs) ------------------------------------------
    def available(self) -> int:
        if self.prompt is None:
            return 0
        if self.ended:
            return UNBOUNDED
        return self.prompt_len + 1 + self.generated

    def rows_for(self, p: int) -> torch.Tensor:
        P, made = self.prompt_len, self.generated
        if p < P:
            return self.states[p]
        if p == P:
            return self.text_bos
        k = p - P - 1  # generated token k
        if k < made:
            return self.states[P + k]
        return self.text_eos if k == made else self.text_pad

    def rows(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.stack([self.rows_for(p).to(self.text_bos.dtype) for p in range(start, start + n)])
        first_kept = self.prompt_len if self.codec_start else self.prompt_len + 2
        return rows, torch.arange(start, start + n) >= first_kept
