"""The Qwen2.5-Omni speech kinds: ``talker`` (thinker states in, codec tokens streamed out, on
the AR engine) and ``vocoder`` (codec tokens in, float32 audio chunks streamed out).

Both take the request parameter ``voice`` (a speaker of the checkpoint's ``spk_dict.pt``) and
``seed``. The talker samples with its stage options, not the request's text sampling settings.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from omnistage.ar_engine.attention import ATTN_IMPLEMENTATION
from omnistage.ar_engine.config import EngineConfig
from omnistage.ar_engine.engine import EngineRequest, LLMEngine
from omnistage.ar_engine.kernels import backend_for
from omnistage.ar_engine.sampling import SamplingParams
from omnistage.errors import RequestRejected
from omnistage.graph.options import TalkerOptions, VocoderOptions
from omnistage.graph.plan import StagePlan
from omnistage.checkpoints.loading import checkpoint_dir, component_kwargs, torch_dtype
from omnistage.omni.assets import embedding_rows, load_speakers, thinker_dir
from omnistage.omni.params import check_voice
from omnistage.omni.reply import ThinkerReply
from omnistage.omni.token2wav import OdeSettings, Token2WavEngine, Voice
from omnistage.stages.worker.stage import StageOutput, StageRequest, StreamingInputStage


class TalkerStage(StreamingInputStage):
    def __init__(self, model: Any, options: TalkerOptions, text_bos: dict[str, torch.Tensor],
                 text_eos: torch.Tensor, text_pad: torch.Tensor, max_seqs: int, device: str) -> None:
        cfg = model.config
        self.options = options
        self.text_bos, self.text_eos, self.text_pad = text_bos, text_eos, text_pad
        if options.default_voice not in text_bos:
            raise ValueError(f"default_voice {options.default_voice!r} is not a speaker: {', '.join(text_bos)}")
        self.codec = {"bos": cfg.tts_codec_start_token_id, "pad": cfg.tts_codec_pad_token_id,
                      "mask": cfg.tts_codec_mask_token_id}
        stops = options.stop_token_ids
        self.stop_ids = frozenset((cfg.tts_codec_end_token_id, cfg.tts_codec_pad_token_id) if stops is None else stops)
        self.media_ids = frozenset(getattr(cfg, k) for k in ("image_token_index", "video_token_index",
                                                             "audio_token_index") if getattr(cfg, k, None) is not None)
        # Prefix caching off: the talker's prompt positions are all the same mask token (what differs
        # is fed from outside), so their hashes would match across requests that share nothing.
        context = getattr(cfg, "max_position_embeddings", None) or options.max_model_len
        config = EngineConfig(block_size=options.block_size, kv_cache_mb=options.kv_cache_mb,
                              max_model_len=min(options.max_model_len, context),
                              max_tokens_per_step=options.max_tokens_per_step, prefix_caching=False)
        self.engine = LLMEngine(model, None, config, max_seqs, backend=backend_for(device), eos_ids=self.stop_ids)
        self.replies: dict[str, ThinkerReply] = {}
        self.sampling: dict[str, SamplingParams] = {}  # waiting for the thinker's prompt
        self.silent: list[str] = []  # requests whose thinker said nothing to speak

    def info(self) -> dict[str, Any]:
        return {"voices": sorted(self.text_bos)}

    def add(self, request: StageRequest) -> None:
        voice = check_voice(self.options, self.info(), request.params)["voice"]
        reply = ThinkerReply(self.text_bos[voice], self.text_eos, self.text_pad, self.media_ids,
                             codec_start=not self.options.reference_unpadded)
        self.replies[request.rid] = reply
        self.sampling[request.rid] = SamplingParams(
            max_tokens=self.options.max_tokens, temperature=self.options.temperature, top_k=self.options.top_k,
            top_p=self.options.top_p, repetition_penalty=self.options.repetition_penalty,
            seed=request.params.get("seed"), suppress_token_ids=(self.codec["bos"],))
        self.feed(request.rid, "states", list(request.inputs.get("states") or []), "states" not in request.open)

    def feed(self, rid: str, port: str, values: list[Any], last: bool) -> None:
        reply = self.replies.get(rid)
        if reply is None:
            return
        started = reply.prompt is not None
        try:
            for value in values:
                reply.push(value)
        except ValueError as exc:
            raise RequestRejected(str(exc), status=500) from None
        if last:
            reply.end()
        if not started and reply.prompt is not None:
            self._start(rid, reply)
        if reply.ended and reply.generated == 0:
            self.silent.append(rid)

    def _start(self, rid: str, reply: ThinkerReply) -> None:
        P = reply.prompt_len
        prompt = [self.codec["mask"]] * P + [self.codec["pad"], self.codec["bos"]]
        positions = None  # 1-D
        if reply.mrope is not None and not self.options.reference_unpadded:
            tail = torch.arange(P, P + 2) + reply.mrope_delta
            positions = torch.cat([reply.mrope, tail.unsqueeze(0).expand(3, -1)], dim=1)
        self.engine.add(EngineRequest(rid, prompt, self.sampling.pop(rid), mrope_positions=positions,
                                      mrope_delta=reply.mrope_delta, fed=reply))

    def step(self) -> list[StageOutput]:
        outs = [self._silence(rid) for rid in self.silent if rid in self.replies]
        self.silent = []
        for out in self.engine.step():
            codes = [t for t in out.tokens if t not in self.stop_ids]
            meta = {"finish_reason": out.finish_reason, "codec_tokens": out.completion_tokens} if out.finished else {}
            outs.append(StageOutput(out.rid, ports={"codes": codes}, finished=out.finished, meta=meta))
            if out.finished:
                self._forget(out.rid)
        return outs

    def _silence(self, rid: str) -> StageOutput:
        self.engine.abort(rid)
        self._forget(rid)
        return StageOutput(rid, ports={"codes": []}, finished=True, meta={"finish_reason": "stop", "codec_tokens": 0})

    def _forget(self, rid: str) -> None:
        self.replies.pop(rid, None)
        self.sampling.pop(rid, None)

    def abort(self, rid: str) -> None:
        self._forget(rid)
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return bool(self.silent) or self.engine.has_work()

    def stats(self) -> dict[str, float]:
        return {**self.engine.stats(), "waiting_for_thinker": float(len(self.sampling))}


class VocoderStage(StreamingInputStage):
    def __init__(self, model: Any, speakers: dict[str, dict[str, Any]], options: VocoderOptions, max_batch: int) -> None:
        self.options = options
        self.voices = {name: Voice(s["cond"].float(), s["ref_mel"].float()) for name, s in speakers.items()}
        if options.default_voice not in self.voices:
            raise ValueError(f"default_voice {options.default_voice!r} is not a speaker: {', '.join(self.voices)}")
        dit = model.code2wav_dit_model
        ode = OdeSettings(options.num_steps, options.guidance_scale, options.sway_coefficient)
        max_codes = dit.config.max_position_embeddings // dit.config.repeats
        self.rtf: float | None = None
        hop = math.prod(model.code2wav_bigvgan_model.config.upsample_rates)
        self.engine = Token2WavEngine(dit, model.code2wav_bigvgan_model, ode, options.chunk_codes,
                                      options.left_context_codes, max_batch, max_codes, options.first_chunk_codes,
                                      code_seconds=dit.config.repeats * hop / options.sample_rate)

    def info(self) -> dict[str, Any]:
        return {"sample_rate": self.options.sample_rate, "voices": sorted(self.voices)}

    def add(self, request: StageRequest) -> None:
        voice = check_voice(self.options, self.info(), request.params)["voice"]
        self.engine.add(request.rid, self.voices[voice], request.params.get("seed"))
        self.feed(request.rid, "codes", list(request.inputs.get("codes") or []), "codes" not in request.open)

    def feed(self, rid: str, port: str, values: list[Any], last: bool) -> None:
        self.engine.feed(rid, [c for part in values for c in part], last)

    def step(self) -> list[StageOutput]:
        start = time.perf_counter()
        made = self.engine.step()
        samples = sum(a.samples.numel() for a in made)
        if samples:  # compute seconds per second of audio made
            rtf = (time.perf_counter() - start) * self.options.sample_rate / samples
            self.rtf = rtf if self.rtf is None else 0.9 * self.rtf + 0.1 * rtf
        return [StageOutput(a.rid, ports={"audio": a.samples}, finished=a.last,
                            meta={"sample_rate": self.options.sample_rate} if a.last else {}) for a in made]

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def stats(self) -> dict[str, float]:
        return {"running": float(len(self.engine.replies)), "real_time_factor": self.rtf or 0.0}


def build_talker(stage: StagePlan, device: str) -> TalkerStage:
    from transformers import Qwen2_5OmniTalkerForConditionalGeneration
    assert stage.model_path is not None
    path, options = checkpoint_dir(stage.model_path), stage.options
    model = Qwen2_5OmniTalkerForConditionalGeneration.from_pretrained(
        path, dtype=torch_dtype(stage.model_dtype, path, device), attn_implementation=ATTN_IMPLEMENTATION,
        **component_kwargs(path, stage.model_component)).to(device).eval()
    speakers = load_speakers(path)
    cfg = model.config
    names = sorted(speakers)
    ids = [int(speakers[n]["bos_token"]) for n in names] + [cfg.tts_text_end_token_id, cfg.tts_text_pad_token_id]
    # A talker loaded from the whole checkpoint finds the thinker's embedding in the same files.
    rows = embedding_rows(thinker_dir(path, options.thinker or (path if stage.model_component else None)), ids)
    return TalkerStage(model, options, dict(zip(names, rows[:len(names)])), rows[-2], rows[-1],
                       stage.config.batching.max_batch, device)


def build_vocoder(stage: StagePlan, device: str) -> VocoderStage:
    from transformers import Qwen2_5OmniToken2WavModel
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    # token2wav runs in float32 whatever the checkpoint's dtype (as the reference does).
    model = Qwen2_5OmniToken2WavModel.from_pretrained(
        path, dtype=torch.float32, **component_kwargs(path, stage.model_component)).to(device).eval()
    return VocoderStage(model, load_speakers(path), stage.options, stage.config.batching.max_batch)
