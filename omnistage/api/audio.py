"""``POST /v1/audio/speech`` (streamed bytes) and ``POST /v1/audio/transcriptions`` (upload).

Speech formats: ``mp3`` (the default, as OpenAI's), ``opus`` (Ogg) and ``aac`` (ADTS), encoded at
24 kHz as the audio comes (``audio_codecs``); ``wav`` (16-bit PCM at the model's rate, a
streaming header whose sizes say "unknown"), ``pcm`` (raw 16-bit little-endian at 24 kHz, as
OpenAI's pcm), ``flac`` (whole file at the end). Audio leaves as the TTS stage's vocoder produces it;
``stream: false`` sends it whole instead, with its usage in ``x-usage-*`` headers (``usage``).
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import torch
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from omnistage.api.audio_codecs import MEDIA as CODEC_MEDIA
from omnistage.api.audio_codecs import StreamEncoder, encode_clip
from omnistage.api.errors import ApiError, from_exception
from omnistage.api.fields import SPEECH as SPEECH_FIELDS
from omnistage.api.fields import TRANSCRIPTIONS, TRANSLATIONS
from omnistage.api.request import FormBody, abort_on_failure, check_model, log_admitted, read_body
from omnistage.api.usage import token_usage, usage_headers
from omnistage.stages.runtime.handle import ChunkEvent, DoneEvent, ErrorEvent

PCM_RATE = 24000
MEDIA = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", **CODEC_MEDIA}


def pcm16(samples: torch.Tensor) -> bytes:
    return (samples.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()


def wav_header(rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes 0xFFFFFFFF, as streaming servers do)."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


class Resampler:
    """Streamed resampling to 24 kHz with soxr's stream resampler: the output of the chunks,
    concatenated, equals resampling the whole clip (tested)."""

    def __init__(self, rate: int, target: int = PCM_RATE) -> None:
        import soxr
        self.rate, self.target = rate, target
        self._stream = soxr.ResampleStream(rate, target, 1, dtype="float32") if rate != target else None

    def feed(self, samples: torch.Tensor, last: bool = False) -> torch.Tensor:
        if self._stream is None:
            return samples
        out = self._stream.resample_chunk(samples.float().numpy(), last=last)
        return torch.from_numpy(out.copy())


def _speech_request(request: Request, body: dict[str, Any]) -> tuple[str, dict[str, Any], str, str]:
    """(input, parameters, format, delivery: ``audio`` streamed bytes, ``sse`` events or ``whole``:
    the body at once, with its usage in headers)."""
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "input must be a non-empty string", "input")
    fmt = body.get("response_format") or "mp3"
    if fmt not in MEDIA:
        raise ApiError(400, f"response_format must be one of {', '.join(MEDIA)}, got {fmt!r}", "response_format")
    events = body.get("stream_format") or "audio"
    if events not in ("audio", "sse"):
        raise ApiError(400, f"stream_format must be audio or sse, got {events!r}", "stream_format")
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    if not stream and events == "sse":
        raise ApiError(400, "stream false asks for the whole audio at once; stream_format sse streams it", "stream")
    whole = not stream or fmt == "flac"  # (a FLAC file is written whole at the end anyway)
    return text, SPEECH_FIELDS.params(body), fmt, "sse" if events == "sse" else "whole" if whole else "audio"


async def _sse(chunks: AsyncIterator[bytes], done: dict[str, Any]) -> AsyncIterator[str]:
    """The audio bytes as OpenAI's speech events: ``speech.audio.delta`` (base64 ``audio``), then
    ``speech.audio.done`` with the usage the stages reported (``done``, filled as the stream ends)."""
    async for data in chunks:
        if data:
            yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(data).decode()})}\n\n"
    if done:
        yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': done})}\n\n"


def sample_rate(request: Request) -> int:
    pipe = request.app.state.pipeline
    rates = [info["sample_rate"] for info in pipe.orchestrator.infos.values() if "sample_rate" in info]
    return rates[0] if rates else PCM_RATE


async def speech(request: Request) -> Response:
    body = await read_body(request)
    check_model(request, body, required=False)
    text, params, fmt, delivery = _speech_request(request, body)
    handle = request.app.state.pipeline.submit(prompt=text, modalities=["audio"], loop=asyncio.get_running_loop(),
                                               **params)
    log_admitted(request, [handle])
    events = handle.aevents()
    first = await anext(events)
    if isinstance(first, ErrorEvent):  # nothing sent yet: a proper error status
        return from_exception(first.error)
    rate = sample_rate(request)

    async def body_bytes() -> AsyncIterator[bytes]:
        resampler, collected, finished, seconds = Resampler(rate), [], False, 0.0
        encoder = StreamEncoder(fmt, PCM_RATE) if fmt in CODEC_MEDIA else None
        try:
            if fmt == "wav":
                yield wav_header(rate)
            event: Any = first
            while True:
                last = isinstance(event, DoneEvent)
                if isinstance(event, ChunkEvent) or last:
                    samples = event.value if isinstance(event, ChunkEvent) else torch.zeros(0)
                    seconds += len(samples) / rate
                    if fmt == "wav":
                        yield pcm16(samples)
                    elif fmt == "pcm":
                        yield pcm16(resampler.feed(samples, last))
                    elif encoder is not None:
                        yield encoder.feed(resampler.feed(samples, last))
                    else:
                        collected.append(samples)
                if last or isinstance(event, ErrorEvent):
                    finished, outcome["event"] = True, event
                    break
                event = await anext(events)
            if fmt == "flac":
                yield _flac(torch.cat(collected), rate)
            if encoder is not None and isinstance(event, DoneEvent):
                yield encoder.close()
            if isinstance(event, DoneEvent):  # (a failed request is counted by its status, not as a success)
                request.app.state.metrics.observe(handle, event.meta, rate)
                usage.update(_usage(event.meta, seconds))
        finally:  # a client that goes away stops the request in every stage
            if not finished:
                request.app.state.pipeline.orchestrator.abort(handle.rid)

    usage: dict[str, Any] = {}
    outcome: dict[str, Any] = {}
    if delivery == "sse":
        return StreamingResponse(_sse(body_bytes(), usage), media_type="text/event-stream")
    if delivery == "audio":
        return StreamingResponse(body_bytes(), media_type=MEDIA[fmt])
    data = b"".join([chunk async for chunk in body_bytes()])
    if isinstance(outcome.get("event"), ErrorEvent):  # nothing sent yet: a proper error status
        return from_exception(outcome["event"].error)
    return Response(data, media_type=MEDIA[fmt], headers=usage_headers(usage))


def _usage(meta: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Tokens the stages reported and the seconds of audio made."""
    return {**token_usage(meta), "audio_seconds": round(seconds, 3)}


def _flac(samples: torch.Tensor, rate: int) -> bytes:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, samples.numpy().astype(np.float32), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


async def transcriptions(request: Request) -> Response:
    return await _speech_to_text(request, "transcribe")


async def translations(request: Request) -> Response:
    """Whisper's translate task: the audio's speech as English text."""
    return await _speech_to_text(request, "translate")


async def _speech_to_text(request: Request, task: str) -> Response:
    body = await read_body(request)
    check_model(request, body, required=False)
    upload = body.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "file is required (a multipart upload of the audio)", "file")
    fmt = body.get("response_format") or "json"
    if fmt not in TRANSCRIPT_FORMATS:
        raise ApiError(400, f"response_format must be one of {', '.join(TRANSCRIPT_FORMATS)}, got {fmt!r}",
                       "response_format")
    params = (TRANSCRIPTIONS if task == "transcribe" else TRANSLATIONS).params(body)
    stream = _stream_flag(body)
    if stream and fmt not in ("json", "text"):
        raise ApiError(400, f"stream gives the transcript's text as it comes: response_format json or text, not {fmt}",
                       "response_format")
    if "task" in params:
        raise ApiError(400, "task is set by the endpoint (/v1/audio/transcriptions or /v1/audio/translations)", "task")
    if "prompt" in params:  # (a request's "prompt" is a text input to the graph; Whisper's is a parameter)
        params["initial_prompt"] = params.pop("prompt")
    granularities = _granularities(body, fmt) if task == "transcribe" else {"segment"}
    if "word" in granularities:
        params["word_timestamps"] = True
    inputs = _transcription_inputs(request, await upload.read(), task)
    if "messages" not in inputs:  # (Whisper's own task; a chat model gets an instruction instead)
        params["task"] = task
    elif "word" in granularities:
        raise ApiError(400, "this graph's transcription (a chat model's) has no word timestamps",
                       "timestamp_granularities")
    handle = request.app.state.pipeline.submit(**inputs, modalities=["text"], loop=asyncio.get_running_loop(),
                                               **params)
    log_admitted(request, [handle])
    if stream:
        return await _transcript_events(request, handle)
    (result,) = await abort_on_failure(request, [handle])
    request.app.state.metrics.observe(handle, result.meta)
    text = result.text or ""
    tokens = sum(m.get("completion_tokens", 0) for m in result.meta.values())
    usage = {"type": "tokens", "input_tokens": 0, "output_tokens": tokens, "total_tokens": tokens}
    if fmt == "text":
        return PlainTextResponse(text, headers=usage_headers(usage))
    payload: dict[str, Any] = {"text": text}
    if fmt in ("srt", "vtt", "verbose_json"):
        timed = next((m for m in result.meta.values() if "segments" in m), None)
        if timed is None:
            raise ApiError(400, f"response_format {fmt} needs timed segments, which this graph's transcription "
                                "(a chat model's) does not give; use json or text", "response_format")
        if fmt != "verbose_json":
            return PlainTextResponse(subtitles(timed["segments"], fmt), media_type=f"text/{fmt}",
                                     headers=usage_headers(usage))
        payload.update(task=task, language=_language_name(timed.get("language")), duration=timed["duration"])
        if "segment" in granularities:
            payload["segments"] = [{"id": i, "start": start, "end": end, "text": seg}
                                   for i, (start, end, seg) in enumerate(timed["segments"])]
        if "word" in granularities:
            payload["words"] = [{"word": word, "start": start, "end": end} for start, end, word in timed["words"]]
    payload["usage"] = usage
    return JSONResponse(payload)


TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")


def _granularities(body: dict[str, Any], fmt: str) -> set[str]:
    """``timestamp_granularities`` (a JSON list, or repeated ``timestamp_granularities[]`` form
    fields as the openai client sends them): what verbose_json times; default segments."""
    if isinstance(body, FormBody):
        asked = [v for k, v in body.multi if k in ("timestamp_granularities", "timestamp_granularities[]")]
    else:
        asked = body.get("timestamp_granularities")
        asked = [asked] if isinstance(asked, str) else asked
    if asked is None or asked == []:
        return {"segment"}
    if not isinstance(asked, list) or any(g not in GRANULARITIES for g in asked):
        raise ApiError(400, f"timestamp_granularities must be a list of {' and '.join(GRANULARITIES)}, got {asked!r}",
                       "timestamp_granularities")
    if fmt != "verbose_json":
        raise ApiError(400, f"timestamp_granularities needs response_format verbose_json, not {fmt}",
                       "timestamp_granularities")
    return set(asked)


def _stream_flag(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value in (None, False, "false"):
        return False
    if value in (True, "true"):
        return True
    raise ApiError(400, f"stream must be true or false, got {value!r}", "stream")


async def _transcript_events(request: Request, handle: Any) -> Response:
    """The transcript as OpenAI's events: ``transcript.text.delta`` as windows are decoded, then
    ``transcript.text.done`` with the whole text and the usage."""
    events = handle.aevents()
    first = await anext(events)
    if isinstance(first, ErrorEvent):  # nothing sent yet: a proper error status
        return from_exception(first.error)

    async def body() -> AsyncIterator[str]:
        text, event, finished = "", first, False
        try:
            while True:
                if isinstance(event, ChunkEvent) and event.modality == "text" and event.value:
                    text += event.value
                    yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': event.value})}\n\n"
                elif isinstance(event, DoneEvent):
                    request.app.state.metrics.observe(handle, event.meta)
                    tokens = sum(m.get("completion_tokens", 0) for m in event.meta.values())
                    usage = {"type": "tokens", "input_tokens": 0, "output_tokens": tokens, "total_tokens": tokens}
                    yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': text, 'usage': usage})}\n\n"
                elif isinstance(event, ErrorEvent):
                    error = {"message": str(event.error), "type": "server_error", "param": None, "code": None}
                    yield f"data: {json.dumps({'type': 'error', 'error': error})}\n\n"
                if isinstance(event, (DoneEvent, ErrorEvent)):
                    finished = True
                    break
                event = await anext(events)
        finally:  # a client that goes away stops the request in every stage
            if not finished:
                request.app.state.pipeline.orchestrator.abort(handle.rid)

    return StreamingResponse(body(), media_type="text/event-stream")


def subtitles(segments: list[tuple[float, float, str]], fmt: str) -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) cues, one per timed segment."""
    def stamp(seconds: float) -> str:
        ms = round(seconds * 1000)
        clock = f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}"
        return f"{clock},{ms % 1000:03d}" if fmt == "srt" else f"{clock}.{ms % 1000:03d}"
    cues = [f"{stamp(start)} --> {stamp(end)}\n{text}\n" for start, end, text in segments]
    if fmt == "srt":
        return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))
    return "WEBVTT\n\n" + "\n".join(cues)


TRANSCRIBE_INSTRUCTION = "Transcribe this audio."
TRANSLATE_INSTRUCTION = "Translate the speech in this audio into English."


def _transcription_inputs(request: Request, clip: bytes, task: str = "transcribe") -> dict[str, Any]:
    """The audio alone for a graph with a speech-to-text route (Whisper); for one whose model
    takes audio in a chat (Qwen2.5-Omni's thinker), the audio with an instruction to transcribe
    (or translate)."""
    plan = request.app.state.pipeline.plan
    if "text" in plan.reachable_modalities(frozenset({"audio"})):
        return {"audio": [clip]}
    instruction = TRANSCRIBE_INSTRUCTION if task == "transcribe" else TRANSLATE_INSTRUCTION
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": instruction}]}]
    return {"audio": [clip], "messages": messages}


def _language_name(code: str | None) -> str:
    """OpenAI's verbose_json names the language ("english"), as Whisper's table does."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES
    return LANGUAGES.get(code or "en", code or "english")


# --- spoken chat replies (modalities: ["text", "audio"]) -----------------------------------
CHAT_FORMATS = ("wav", "pcm16", "flac", "mp3", "opus", "aac")


def chat_audio(body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The ``audio`` request field -> (tts parameters, format), or None when no audio is asked for."""
    if "audio" not in (body.get("modalities") or []):
        return None
    spec = body.get("audio")
    if not isinstance(spec, dict) or not spec.get("voice"):
        raise ApiError(400, 'modalities with "audio" need audio: {"voice": ..., "format": ...}', "audio")
    fmt = spec.get("format") or "wav"
    if fmt not in CHAT_FORMATS or (body.get("stream") and fmt != "pcm16"):
        allowed = "pcm16 when streaming" if body.get("stream") else ", ".join(CHAT_FORMATS)
        raise ApiError(400, f"audio.format must be {allowed}, got {fmt!r}", "audio.format")
    return {"voice": spec["voice"]}, fmt


def encode_audio(samples: torch.Tensor, rate: int, fmt: str) -> bytes:
    if fmt == "pcm16":
        return pcm16(Resampler(rate).feed(samples, last=True))
    if fmt == "flac":
        return _flac(samples, rate)
    if fmt in CODEC_MEDIA:
        return encode_clip(Resampler(rate).feed(samples, last=True), PCM_RATE, fmt)
    header = bytearray(wav_header(rate))
    data = pcm16(samples)
    header[4:8] = struct.pack("<I", 36 + len(data))
    header[40:44] = struct.pack("<I", len(data))
    return bytes(header) + data


def message_audio(samples: torch.Tensor, rate: int, fmt: str, transcript: str) -> dict[str, Any]:
    data = base64.b64encode(encode_audio(samples, rate, fmt)).decode()
    return {"id": "audio_" + uuid.uuid4().hex, "data": data, "expires_at": int(time.time()) + 3600,
            "transcript": transcript}
