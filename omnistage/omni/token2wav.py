"""Codec tokens to waveform, batched across requests and streamed in chunks.

Qwen2.5-Omni's token2wav solves a flow-matching ODE with a DiT (codec tokens -> mel frames,
``repeats`` frames per token) from Gaussian noise, then runs BigVGAN (mel -> samples). Here each
request's audio is made window by window as its codec tokens arrive: a window is the next
``chunk`` new tokens (``first_chunk`` for a reply's first window) plus up to ``left_context``
earlier ones, and only the new tokens' samples are emitted. Windows of the same length and
context from different requests share one ODE solve (the DiT treats batch rows independently)
and BigVGAN's calls (``VOCODER_ROWS`` rows each). The most urgent window goes first: a reply's
next audio is due when the audio it already has would finish playing (a reply with none yet is
due when it arrived), and it takes along the most urgent windows of the same length and context.

The noise of frame f is the same whatever the chunking: each request draws its noise frame by
frame, in order, from its own generator. With ``chunk`` 0 a request is made in one window once
its tokens are complete, which is exactly the reference ``Qwen2_5OmniToken2WavModel`` call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

from omnistage.omni.speedups import block_masks_unexpanded, fast_bigvgan, speaker_encoded_once


# Mel frames of left context BigVGAN gets before a window's new frames (its receptive field is
# about 8 frames each side; the rest of the DiT's context need not be turned into samples).
VOCODER_CONTEXT_FRAMES = 16
# Rows per BigVGAN call: the DiT gains from larger batches, BigVGAN's cost per frame does not
# fall beyond a few rows and rises for large calls on a CPU (its tensors leave the caches).
VOCODER_ROWS = 8


@dataclass
class Voice:
    cond: torch.Tensor  # [enc_dim] speaker embedding
    ref_mel: torch.Tensor  # [frames, mel] reference mel


@dataclass
class Reply:
    rid: str
    voice: Voice
    generator: torch.Generator
    arrived: float
    codes: list[int] = field(default_factory=list)
    ended: bool = False
    done: int = 0  # codes whose samples were emitted
    noise: torch.Tensor | None = None  # [frames drawn, mel]


@dataclass(frozen=True)
class Window:
    reply: Reply
    start: int  # first code of the window (context included)
    new: int  # first code whose samples are emitted
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def shape(self) -> tuple[int, int]:
        """(codes, of which context): windows batch together only when both agree."""
        return self.length, self.new - self.start


@dataclass(frozen=True)
class AudioOut:
    rid: str
    samples: torch.Tensor  # float32 [n]
    last: bool


@dataclass(frozen=True)
class OdeSettings:
    num_steps: int = 10
    guidance_scale: float = 0.5
    sway_coefficient: float = -1.0


class Token2WavEngine:
    def __init__(self, dit: Any, bigvgan: Any, ode: OdeSettings, chunk: int, left_context: int,
                 max_batch: int, max_codes: int, first_chunk: int = 0, code_seconds: float = 0.02) -> None:
        self.dit, self.bigvgan, self.ode = dit, bigvgan, ode
        self.chunk, self.left_context, self.max_batch, self.max_codes = chunk, left_context, max_batch, max_codes
        self.first_chunk = first_chunk or chunk
        self.code_seconds = code_seconds  # audio per codec token
        self.repeats = dit.config.repeats
        self.mel_dim = dit.config.mel_dim
        self.replies: dict[str, Reply] = {}
        fast_bigvgan(bigvgan)

    def add(self, rid: str, voice: Voice, seed: int | None) -> None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        self.replies[rid] = Reply(rid, voice, generator, time.monotonic())

    def feed(self, rid: str, codes: list[int], last: bool) -> None:
        reply = self.replies.get(rid)
        if reply is None:
            return
        reply.codes.extend(codes)
        del reply.codes[self.max_codes:]  # what the DiT's positions cannot hold is cut
        reply.ended = reply.ended or last

    def abort(self, rid: str) -> None:
        self.replies.pop(rid, None)

    def has_work(self) -> bool:
        return any(self._window(r) is not None or (r.ended and r.done >= len(r.codes)) for r in self.replies.values())

    # --- one step: the most urgent window and those shaped like it, up to max_batch -------------
    def step(self) -> list[AudioOut]:
        outs = [self._finish(r) for r in list(self.replies.values()) if r.ended and r.done >= len(r.codes)]
        windows = [w for r in self.replies.values() if (w := self._window(r)) is not None]
        if not windows:
            return outs
        windows.sort(key=lambda w: w.reply.arrived + w.reply.done * self.code_seconds)
        batch = [w for w in windows if w.shape == windows[0].shape][:self.max_batch]
        for w, samples in zip(batch, self._vocode(batch)):
            w.reply.done = w.end
            last = w.reply.ended and w.end >= len(w.reply.codes)
            if last:
                del self.replies[w.reply.rid]
            outs.append(AudioOut(w.reply.rid, samples, last))
        return outs

    def _finish(self, reply: Reply) -> AudioOut:
        del self.replies[reply.rid]
        return AudioOut(reply.rid, torch.zeros(0), True)

    def _window(self, reply: Reply) -> Window | None:
        have = len(reply.codes)
        new = have - reply.done
        if new <= 0:
            return None
        if self.chunk == 0:
            return Window(reply, 0, 0, have) if reply.ended else None
        size = self.first_chunk if reply.done == 0 else self.chunk
        if new < size and not reply.ended:
            return None
        end = reply.done + min(new, size)
        return Window(reply, max(0, reply.done - self.left_context), reply.done, end)

    @torch.inference_mode()
    def _vocode(self, batch: list[Window]) -> list[torch.Tensor]:
        device = next(self.dit.parameters()).device
        frames = batch[0].length * self.repeats
        codes = torch.tensor([w.reply.codes[w.start:w.end] for w in batch], device=device)
        noise = torch.stack([self._noise(w.reply, w.start * self.repeats, frames) for w in batch]).to(device)
        cond = torch.stack([w.reply.voice.cond for w in batch]).to(device).float()
        ref_mel = torch.stack([w.reply.voice.ref_mel for w in batch]).to(device).float()
        mel = self._solve(noise, cond.unsqueeze(1).repeat(1, frames, 1), ref_mel, codes)
        skip = (batch[0].new - batch[0].start) * self.repeats  # context frames before the new ones (same in the batch)
        context = min(skip, VOCODER_CONTEXT_FRAMES)
        mel = mel[:, :, skip - context:]
        wave = torch.cat([self.bigvgan(mel[i:i + VOCODER_ROWS]) for i in range(0, len(batch), VOCODER_ROWS)])
        wave = wave.reshape(len(batch), -1).float()
        per_frame = wave.shape[1] // (frames - skip + context)
        return list(wave[:, context * per_frame:].contiguous())

    def _noise(self, reply: Reply, first: int, n: int) -> torch.Tensor:
        """Noise of frames [first, first + n), drawn in frame order from the request's generator."""
        drawn = 0 if reply.noise is None else reply.noise.shape[0]
        if first + n > drawn:
            more = torch.randn([1, first + n - drawn, self.mel_dim], generator=reply.generator)[0]
            reply.noise = more if reply.noise is None else torch.cat([reply.noise, more])
        return reply.noise[first:first + n]

    def _solve(self, noise: torch.Tensor, cond: torch.Tensor, ref_mel: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The reference ``Qwen2_5OmniToken2WavDiTModel.sample`` ODE for a batch -> mel [B, mel, frames]."""
        ode = self.ode
        guided = ode.guidance_scale >= 1e-5

        def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            out = self.dit(hidden_states=x, speaker_embedding=cond, condition_vector=ref_mel, quantized_code=codes,
                           time_step=t, drop_audio_conditioning=False, drop_code=False, apply_cfg=guided)
            if not guided:
                return out
            cond_out, null_out = torch.chunk(out, 2, dim=0)
            return cond_out + (cond_out - null_out) * ode.guidance_scale

        times = torch.linspace(0, 1, ode.num_steps, device=noise.device, dtype=cond.dtype)
        if ode.sway_coefficient is not None:
            times = times + ode.sway_coefficient * (torch.cos(torch.pi / 2 * times) - 1 + times)
        reference = torch.cat([ref_mel, torch.zeros_like(ref_mel)]) if guided else ref_mel
        with speaker_encoded_once(self.dit.input_embed, reference), block_masks_unexpanded(self.dit):
            solution = RungeKutta4ODESolver(function=velocity, initial_value=noise).integrate(times)
        return solution[-1].permute(0, 2, 1)
