"""The speech kinds: ``tts`` (text in, audio streamed out) and ``transcribe`` (audio in, text out).

``tts`` streams float32 mono chunks at the vocoder's rate (reported as ``sample_rate`` in the
stage's Ready info); request parameters ``voice`` (a name from the voices file) and ``speed``
(0.25-4.0). ``transcribe`` takes one clip (bytes, data URL or ``{"array", "sampling_rate"}``)
and the parameter ``max_tokens``.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from omnistage.encoders.media import MediaLimits, load_audio
from omnistage.errors import RequestRejected
from omnistage.graph.options import TranscribeOptions, TtsOptions
from omnistage.graph.plan import StagePlan
from omnistage.checkpoints.loading import checkpoint_dir, torch_dtype
from omnistage.speech.asr import Clip, Decoded, Decoding, TranscribeEngine, Timed, split_windows
from omnistage.speech.params import check_speech
from omnistage.speech.tts import SpeechJob, TtsEngine
from omnistage.stages.worker.stage import Stage, StageOutput, StageRequest


class TtsStage(Stage):
    def __init__(self, model: Any, tokenizer: Any, vocoder: Any, voices: dict[str, torch.Tensor],
                 options: TtsOptions, max_batch: int) -> None:
        self.model, self.tokenizer, self.vocoder, self.voices = model, tokenizer, vocoder, voices
        self.options = options
        if options.default_voice not in voices:
            raise ValueError(f"default_voice {options.default_voice!r} is not among the voices: {', '.join(voices)}")
        hop = math.prod(vocoder.config.upsample_rates)
        self.sample_rate = vocoder.config.sampling_rate
        self.engine = TtsEngine(self._generate, vocoder, hop, max_batch, options.chunk_frames, options.context_frames)
        self._silent: list[str] = []  # requests with nothing to say, answered by the next step

    def info(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "voices": sorted(self.voices)}

    def add(self, request: StageRequest) -> None:
        """Blank text (an upstream stage's empty reply: the API refuses a blank input) is
        answered with no audio."""
        text = request.inputs.get("text")
        if not isinstance(text, str):
            raise RequestRejected("input must be a non-empty string", param="input")
        if not text.strip():
            self._silent.append(request.rid)
            return
        if len(text) > self.options.max_input_chars:
            raise RequestRejected(f"input must be at most {self.options.max_input_chars} characters", param="input")
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) > self.model.config.max_text_positions:
            raise RequestRejected(f"input is {len(ids)} tokens; this voice model reads at most "
                                  f"{self.model.config.max_text_positions}", param="input")
        spoken = check_speech(self.options, self.info(), request.params)  # as at submit
        self.engine.add(SpeechJob(request.rid, ids, self.voices[spoken["voice"]], spoken["speed"]))

    def _generate(self, jobs: list[SpeechJob]) -> list[torch.Tensor]:
        ids = torch.tensor([j.ids for j in jobs], device=self.model.device)
        voices = torch.stack([j.voice for j in jobs]).to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            frames, lengths = self.model.generate(ids, attention_mask=torch.ones_like(ids), speaker_embeddings=voices,
                                                  threshold=self.options.threshold,
                                                  maxlenratio=self._maxlenratio(ids.shape[1]),
                                                  return_output_lengths=True)
        return [f[:n] for f, n in zip(frames, lengths)]

    def _maxlenratio(self, length: int) -> float:
        """The option, lowered where the decoder would otherwise run past its position table (a long
        input would crash the step, and with it every request of this replica)."""
        config = self.model.config
        fits = (config.max_speech_positions - 2) * config.reduction_factor / length
        return min(self.options.maxlenratio, fits)

    def step(self) -> list[StageOutput]:
        silent, self._silent = self._silent, []
        return [StageOutput(rid, ports={"audio": torch.zeros(0)}, finished=True, meta={"sample_rate": self.sample_rate})
                for rid in silent] + [
            StageOutput(c.rid, ports={"audio": c.samples}, finished=c.last,
                        meta={"sample_rate": self.sample_rate} if c.last else {})
            for c in (self.engine.step() if self.engine.has_work() else [])]

    def abort(self, rid: str) -> None:
        if rid in self._silent:
            self._silent.remove(rid)
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return bool(self._silent) or self.engine.has_work()

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self.engine.waiting)), "running": float(len(self.engine.speaking))}


class TranscribeStage(Stage):
    def __init__(self, model: Any, features: Any, tokenizer: Any, options: TranscribeOptions, max_batch: int) -> None:
        self.model, self.features, self.tokenizer, self.options = model, features, tokenizer, options
        self.limits = MediaLimits(max_bytes=options.max_audio_bytes, max_audio_seconds=options.max_audio_seconds)
        self.window = features.chunk_length * features.sampling_rate
        self.engine = TranscribeEngine(self._transcribe, self._decode, max_batch)

    def add(self, request: StageRequest) -> None:
        clip = request.inputs.get("audio")
        clip = clip[0] if isinstance(clip, list) and len(clip) == 1 else clip
        if isinstance(clip, list):
            raise RequestRejected("transcription takes one audio clip", param="audio")
        samples = load_audio(clip, self.features.sampling_rate, self.limits, param="file")
        max_tokens = request.params.get("max_tokens") or self.options.max_tokens
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestRejected("max_tokens must be an integer >= 1", param="max_tokens")
        self.engine.add(Clip(request.rid, split_windows(samples, self.window), max_tokens, self.features.sampling_rate,
                             self._decoding(request.params)))

    def _decoding(self, params: dict[str, Any]) -> Decoding:
        """The request's language, task, prompt and temperature, checked against the model."""
        config = self.model.generation_config
        languages = {k.strip("<|>"): k for k in getattr(config, "lang_to_id", None) or {}}
        language, task = params.get("language") or None, params.get("task") or "transcribe"
        if language is not None and language not in languages and not (not languages and language == "en"):
            offered = ", ".join(sorted(languages)) if languages else "en (an English-only model)"
            raise RequestRejected(f"language {language!r} is not one of this model's: {offered}", param="language")
        if task == "translate" and "translate" not in (getattr(config, "task_to_id", None) or {}):
            raise RequestRejected("this model does not translate (an English-only Whisper)", param="task")
        prompt = params.get("initial_prompt") or ""  # (OpenAI's "prompt": a request's prompt is a text input here)
        ids: tuple[int, ...] = ()
        if prompt.strip():
            if getattr(config, "prev_sot_token_id", None) is None:
                raise RequestRejected("this model takes no prompt", param="prompt")
            ids = (config.prev_sot_token_id, *self.tokenizer.encode(" " + prompt.strip(), add_special_tokens=False))
            if len(ids) > self.model.config.max_target_positions // 2 - 1:  # (Whisper keeps half its positions for it)
                raise RequestRejected(f"prompt is {len(ids)} tokens; this model takes at most "
                                      f"{self.model.config.max_target_positions // 2 - 1}", param="prompt")
        words = bool(params.get("word_timestamps"))
        if words and (not getattr(config, "alignment_heads", None) or not hasattr(self.tokenizer, "_decode_asr")):
            raise RequestRejected("this model gives no word timestamps (its generation config has no alignment "
                                  "heads, or its tokenizer is not Whisper's)", param="timestamp_granularities")
        return Decoding(language if languages else None, task, ids, float(params.get("temperature") or 0.0), words)

    def _transcribe(self, clips: list[np.ndarray], budget: int, decoding: Decoding) -> list[Decoded]:
        extracted = self.features(clips, sampling_rate=self.features.sampling_rate, return_tensors="pt",
                                  return_attention_mask=decoding.words)
        feats = extracted.input_features.to(self.model.device, self.model.dtype)
        # The decoder's positions hold the prompt, its start tokens (up to 4: start, language,
        # task, no timestamps) and the new ones: a window's budget never goes past them.
        budget = min(budget, self.model.config.max_target_positions - 4 - len(decoding.prompt))
        languages = self._languages(feats, decoding)
        kwargs: dict[str, Any] = {"max_new_tokens": budget}
        if languages[0] is not None:
            kwargs.update(language=languages, task=decoding.task)
        if decoding.prompt:
            kwargs["prompt_ids"] = torch.tensor(decoding.prompt, device=self.model.device)
        if decoding.temperature > 0:
            kwargs.update(do_sample=True, temperature=decoding.temperature)
        if decoding.words:
            return self._timed(feats, extracted.attention_mask.to(self.model.device), kwargs, languages)
        with torch.inference_mode():
            out = self.model.generate(feats, **kwargs)
        return [Decoded(self._until_eos(row), language) for row, language in zip(out.tolist(), languages)]

    def _until_eos(self, row: list[int]) -> list[int]:
        config = self.model.generation_config
        row = row[1:] if row and row[0] == config.decoder_start_token_id else row
        return row[:row.index(config.eos_token_id)] if config.eos_token_id in row else row

    def _timed(self, feats: torch.Tensor, mask: torch.Tensor, kwargs: dict[str, Any],
               languages: list[str | None]) -> list[Decoded]:
        """Decode with timestamp tokens and time each word as the ASR pipeline does: token times by
        dynamic time warping over the alignment heads' cross-attention (``generate`` switches the
        model to eager attention for them; it is switched back), grouped into words by the
        tokenizer."""
        attention = self.model.config._attn_implementation
        try:
            with torch.inference_mode():
                out = self.model.generate(feats, attention_mask=mask, return_timestamps=True,
                                          return_token_timestamps=True, return_segments=True, **kwargs)
        finally:
            self.model.config._attn_implementation = attention
        precision = self.features.chunk_length / self.model.config.max_source_positions
        result = []
        for row, segments, language in zip(out["sequences"], out["segments"], languages):
            times = torch.cat([segment["token_timestamps"] for segment in segments]) if segments else row[:0].float()
            tokens = row[:len(times)]  # (a batch's shorter rows are padded)
            _, words = self.tokenizer._decode_asr([{"tokens": tokens[None].cpu(), "token_timestamps": times[None].cpu()}],
                                                  return_timestamps="word", return_language=None,
                                                  time_precision=precision)
            result.append(Decoded(self._until_eos(row.tolist()), language, _timed_words(words.get("chunks", []))))
        return result

    def _languages(self, feats: torch.Tensor, decoding: Decoding) -> list[str | None]:
        """Each window's language: the asked one, else detected as ``generate`` would (None for an
        English-only model)."""
        lang_to_id = getattr(self.model.generation_config, "lang_to_id", None)
        if not lang_to_id:
            return [None] * len(feats)
        if decoding.language is not None:
            return [decoding.language] * len(feats)
        by_id = {v: k.strip("<|>") for k, v in lang_to_id.items()}
        with torch.inference_mode():
            return [by_id[int(t)] for t in self.model.detect_language(feats).view(-1)]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def step(self) -> list[StageOutput]:
        return [StageOutput(t.rid, ports={"text": t.delta}, finished=t.finished,
                            meta={"completion_tokens": t.tokens, "segments": t.segments, "duration": t.duration,
                                  "language": t.language or "en",
                                  **({"words": t.words} if t.words is not None else {})} if t.finished else {})
                for t in self.engine.step()]

    def abort(self, rid: str) -> None:
        self.engine.abort(rid)

    def has_work(self) -> bool:
        return self.engine.has_work()

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self.engine.waiting))}


def _timed_words(chunks: list[dict[str, Any]]) -> list[Timed]:
    """The pipeline's word chunks as (start, end, word); a word with no end ends where it starts."""
    out = []
    for chunk in chunks:
        start, end = chunk["timestamp"]
        out.append((float(start), float(end if end is not None else start), chunk["text"].strip()))
    return out


def build_tts(stage: StagePlan, device: str) -> TtsStage:
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, SpeechT5ForTextToSpeech, SpeechT5HifiGan
    assert stage.model_path is not None
    path, options = checkpoint_dir(stage.model_path), stage.options
    dtype = torch_dtype(stage.model_dtype, path, device)
    model = SpeechT5ForTextToSpeech.from_pretrained(path, dtype=dtype).to(device).eval()
    vocoder = SpeechT5HifiGan.from_pretrained(options.vocoder or os.path.join(path, "vocoder"), dtype=dtype)
    voices = load_file(options.voices or os.path.join(path, "voices.safetensors"))
    return TtsStage(model, AutoTokenizer.from_pretrained(path), vocoder.to(device).eval(), voices, options,
                    stage.config.batching.max_batch)


def build_transcribe(stage: StagePlan, device: str) -> TranscribeStage:
    from transformers import AutoFeatureExtractor, AutoTokenizer, WhisperForConditionalGeneration
    assert stage.model_path is not None
    path = checkpoint_dir(stage.model_path)
    model = WhisperForConditionalGeneration.from_pretrained(path, dtype=torch_dtype(stage.model_dtype, path, device))
    return TranscribeStage(model.to(device).eval(), AutoFeatureExtractor.from_pretrained(path),
                           AutoTokenizer.from_pretrained(path), stage.options, stage.config.batching.max_batch)
