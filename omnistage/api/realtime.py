"""``/v1/realtime``: spoken chat over a WebSocket, in the shape of OpenAI's realtime API (the
subset a voice conversation needs), on a graph whose chat takes audio and answers with text and
speech (the Qwen2.5-Omni graph).

Client events: ``session.update`` (``voice``, ``instructions``, ``modalities`` / ``output_modalities``,
``max_response_output_tokens``, ``temperature``), ``input_audio_buffer.append`` (base64 16-bit
PCM, 24 kHz mono), ``input_audio_buffer.commit`` / ``.clear``, ``conversation.item.create`` (a
user message of ``input_text`` / ``input_audio`` parts), ``response.create``, ``response.cancel``.
Server events: ``session.created`` / ``.updated``, ``input_audio_buffer.committed`` / ``.cleared``,
``conversation.item.created``, ``response.created``, ``response.audio_transcript.delta`` (or
``response.text.delta`` without audio), ``response.audio.delta`` (base64 16-bit PCM at 24 kHz),
``response.audio_transcript.done``, ``response.audio.done``, ``response.done`` (``status``
completed, cancelled or failed, with ``usage``), ``error``. The conversation (each committed turn
and each answer's transcript) is the context of the next response. ``response.cancel`` stops
the response's request in every stage.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from starlette.websockets import WebSocket, WebSocketDisconnect

from omnistage.api import audio
from omnistage.api.convert import chat_inputs
from omnistage.api.errors import ApiError
from omnistage.errors import OmnistageError
from omnistage.stages.runtime.handle import ChunkEvent, DoneEvent, ErrorEvent, RequestHandle

log = logging.getLogger("omnistage.api")
INPUT_RATE = 24000  # pcm16 input, as OpenAI's realtime API takes it
MAX_BUFFER = 32 << 20


@dataclass
class Session:
    id: str = field(default_factory=lambda: "sess_" + uuid.uuid4().hex[:20])
    voice: str | None = None
    instructions: str = ""
    modalities: tuple[str, ...] = ("text", "audio")
    max_tokens: int | None = None
    temperature: float | None = None
    buffer: bytearray = field(default_factory=bytearray)
    items: list[dict[str, Any]] = field(default_factory=list)  # the conversation, as chat messages

    def view(self) -> dict[str, Any]:
        return {"id": self.id, "object": "realtime.session", "voice": self.voice, "instructions": self.instructions,
                "modalities": list(self.modalities), "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "max_response_output_tokens": self.max_tokens or "inf", "temperature": self.temperature}


class Realtime:
    """One connection: reads client events, runs at most one response at a time."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.session = Session()
        self.lock = asyncio.Lock()  # one sender at a time
        self.response: asyncio.Task[None] | None = None
        self.handle: RequestHandle | None = None
        self.cancelled = False
        self.gone = False  # the client left: nothing more is sent

    async def send(self, kind: str, **body: Any) -> None:
        if self.gone:
            return
        async with self.lock:
            await self.ws.send_text(json.dumps({"type": kind, "event_id": "event_" + uuid.uuid4().hex[:20], **body}))

    async def error(self, message: str, param: str | None = None, code: str = "invalid_request_error",
                    event_id: str | None = None) -> None:
        await self.send("error", error={"type": "invalid_request_error", "code": code, "message": message,
                                        "param": param, "event_id": event_id})

    async def run(self) -> None:
        await self.send("session.created", session=self.session.view())
        while True:
            try:
                text = await self.ws.receive_text()
            except WebSocketDisconnect:
                self.gone = True
                break
            try:
                event = json.loads(text)
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    raise ValueError("an event is a JSON object with a type")
            except ValueError as exc:
                await self.error(f"not a client event: {exc}")
                continue
            try:
                await self.handle_event(event)
            except (ApiError, OmnistageError) as exc:
                await self.error(str(getattr(exc, "message", exc)), getattr(exc, "param", None),
                                 getattr(exc, "code", None) or "invalid_request_error", event.get("event_id"))
        self.cancel()

    async def handle_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        handler = {"session.update": self.update, "input_audio_buffer.append": self.append,
                   "input_audio_buffer.commit": self.commit, "input_audio_buffer.clear": self.clear,
                   "conversation.item.create": self.item, "response.create": self.create,
                   "response.cancel": self.cancel_event}.get(kind)
        if handler is None:
            raise ApiError(400, f"unknown or unsupported client event {kind!r}", "type")
        await handler(event)

    async def update(self, event: dict[str, Any]) -> None:
        body = event.get("session")
        if not isinstance(body, dict):
            raise ApiError(400, "session.update needs a session object", "session")
        s = self.session
        for key, value in body.items():
            if key == "voice" and isinstance(value, str):
                s.voice = value
            elif key == "instructions" and isinstance(value, str):
                s.instructions = value
            elif key in ("modalities", "output_modalities") and isinstance(value, list) and set(value) <= {"text", "audio"} \
                    and "text" in value:
                s.modalities = tuple(value)
            elif key == "max_response_output_tokens" and (value == "inf" or (isinstance(value, int) and value > 0)):
                s.max_tokens = None if value == "inf" else value
            elif key == "temperature" and isinstance(value, (int, float)) and 0 <= value <= 2:
                s.temperature = float(value)
            elif key in ("input_audio_format", "output_audio_format") and value == "pcm16":
                pass
            elif key in ("turn_detection", "input_audio_transcription", "tools", "tool_choice") and not value:
                pass  # (asks for nothing)
            else:
                raise ApiError(400, f"session.{key} is not supported with the value {value!r}", f"session.{key}")
        await self.send("session.updated", session=s.view())

    async def append(self, event: dict[str, Any]) -> None:
        try:
            chunk = base64.b64decode(event.get("audio") or "", validate=True)
        except ValueError:
            raise ApiError(400, "audio must be base64 16-bit PCM", "audio") from None
        if len(self.session.buffer) + len(chunk) > MAX_BUFFER:
            raise ApiError(400, f"the input audio buffer holds at most {MAX_BUFFER} bytes", "audio")
        self.session.buffer += chunk

    async def commit(self, event: dict[str, Any]) -> None:
        pcm = bytes(self.session.buffer)
        if len(pcm) < 2:
            raise ApiError(400, "the input audio buffer is empty", "input_audio_buffer")
        self.session.buffer.clear()
        item = {"id": "item_" + uuid.uuid4().hex[:20], "type": "message", "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": _wav_b64(pcm), "format": "wav"}}]}
        self.session.items.append(item)
        await self.send("input_audio_buffer.committed", item_id=item["id"])
        await self.send("conversation.item.created", item=_public(item))

    async def clear(self, event: dict[str, Any]) -> None:
        self.session.buffer.clear()
        await self.send("input_audio_buffer.cleared")

    async def item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or item.get("type", "message") != "message" or item.get("role") != "user":
            raise ApiError(400, "conversation.item.create takes a user message", "item")
        parts = []
        for j, part in enumerate(item.get("content") or []):
            if isinstance(part, dict) and part.get("type") == "input_text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif isinstance(part, dict) and part.get("type") == "input_audio":
                pcm = base64.b64decode(part.get("audio") or "")
                parts.append({"type": "input_audio", "input_audio": {"data": _wav_b64(pcm), "format": "wav"}})
            else:
                raise ApiError(400, "content parts are input_text or input_audio", f"item.content[{j}]")
        entry = {"id": item.get("id") or "item_" + uuid.uuid4().hex[:20], "type": "message", "role": "user",
                 "content": parts}
        self.session.items.append(entry)
        await self.send("conversation.item.created", item=_public(entry))

    async def create(self, event: dict[str, Any]) -> None:
        if self.response is not None and not self.response.done():
            raise ApiError(400, "a response is already in progress; cancel it first", "response",
                           "conversation_already_has_active_response")
        if not self.session.items:
            raise ApiError(400, "the conversation is empty: commit audio or create an item first", "response")
        state = self.ws.app.state
        s = self._for_response(event.get("response"))
        messages = ([{"role": "system", "content": s.instructions}] if s.instructions else []) + \
            [{"role": m["role"], "content": m["content"]} for m in s.items]
        inputs = chat_inputs({"messages": messages})
        params: dict[str, Any] = {}
        if s.max_tokens is not None:
            params["max_tokens"] = s.max_tokens
        if s.temperature is not None:
            params["temperature"] = s.temperature
        spoken = "audio" in s.modalities
        if spoken and s.voice is not None:
            params["voice"] = s.voice
        loop = asyncio.get_running_loop()
        handle = state.pipeline.submit(loop=loop, modalities=list(s.modalities), **inputs, **params)
        self.handle, self.cancelled = handle, False
        rid = "resp_" + uuid.uuid4().hex[:20]
        await self.send("response.created", response={"id": rid, "object": "realtime.response", "status": "in_progress"})
        self.response = asyncio.create_task(self.stream(handle, rid, spoken))

    def _for_response(self, body: Any) -> Session:
        """The session as one response sees it: ``response.create``'s own ``instructions``,
        ``voice``, ``modalities`` and ``max_output_tokens`` over the session's."""
        if body is None or body == {}:
            return self.session
        if not isinstance(body, dict):
            raise ApiError(400, "response must be an object", "response")
        s = Session(self.session.id, self.session.voice, self.session.instructions, self.session.modalities,
                    self.session.max_tokens, self.session.temperature, items=self.session.items)
        for key, value in body.items():
            if key == "instructions" and isinstance(value, str):
                s.instructions = value
            elif key == "voice" and isinstance(value, str):
                s.voice = value
            elif key in ("modalities", "output_modalities") and isinstance(value, list) and "text" in value \
                    and set(value) <= {"text", "audio"}:
                s.modalities = tuple(value)
            elif key in ("max_output_tokens", "max_response_output_tokens") and isinstance(value, int) and value > 0:
                s.max_tokens = value
            else:
                raise ApiError(400, f"response.{key} is not supported with the value {value!r}", f"response.{key}")
        return s

    async def stream(self, handle: RequestHandle, rid: str, spoken: bool) -> None:
        rate = audio.sample_rate(self.ws)
        resampler = audio.Resampler(rate)
        item_id = "item_" + uuid.uuid4().hex[:20]
        transcript, status, usage = "", "completed", {}
        delta_kind = "response.audio_transcript.delta" if spoken else "response.text.delta"
        try:  # (a cancel ends this loop: the aborted request sends nothing more)
            async for event in handle.aevents():
                if isinstance(event, ChunkEvent) and event.modality == "text" and event.value:
                    transcript += event.value
                    await self.send(delta_kind, response_id=rid, item_id=item_id, delta=event.value)
                elif isinstance(event, ChunkEvent) and event.modality == "audio":
                    await self._audio(rid, item_id, resampler.feed(event.value))
                elif isinstance(event, DoneEvent):
                    if spoken:
                        await self._audio(rid, item_id, resampler.feed(torch.zeros(0), last=True))
                    usage = _usage(event.meta)
                elif isinstance(event, ErrorEvent):
                    status = "failed"
                    await self.error(str(event.error), code="response_failed")
        except asyncio.CancelledError:
            status = "cancelled"
        if self.cancelled:
            status = "cancelled"
        await self._finish(rid, item_id, transcript, status, usage, spoken)

    async def _finish(self, rid: str, item_id: str, transcript: str, status: str, usage: dict[str, int],
                      spoken: bool) -> None:
        if spoken:
            await self.send("response.audio.done", response_id=rid, item_id=item_id)
            await self.send("response.audio_transcript.done", response_id=rid, item_id=item_id, transcript=transcript)
        if transcript:  # the answer is the context of the next turn
            self.session.items.append({"id": item_id, "type": "message", "role": "assistant", "content": transcript})
        await self.send("response.done", response={"id": rid, "object": "realtime.response", "status": status,
                                                   "usage": usage})

    async def _audio(self, rid: str, item_id: str, samples: torch.Tensor) -> None:
        if samples.numel():
            data = base64.b64encode(audio.pcm16(samples)).decode()
            await self.send("response.audio.delta", response_id=rid, item_id=item_id, delta=data)

    async def cancel_event(self, event: dict[str, Any]) -> None:
        if self.response is None or self.response.done():
            raise ApiError(400, "no response is in progress", "response", "response_cancel_not_active")
        self.cancel()

    def cancel(self) -> None:
        """Stop the running response's request in every stage; its stream ends with status cancelled."""
        if self.handle is not None and not self.handle.closed:
            self.ws.app.state.pipeline.orchestrator.abort(self.handle.rid)
        if self.response is not None and not self.response.done():
            self.cancelled = True
            self.response.cancel()


def _wav_b64(pcm: bytes) -> str:
    import soundfile as sf
    samples = np.frombuffer(pcm[:len(pcm) // 2 * 2], dtype="<i2")
    buf = io.BytesIO()
    sf.write(buf, samples, INPUT_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def _public(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the server events show it (audio parts without their data)."""
    content = item["content"]
    if isinstance(content, list):
        content = [{"type": "input_audio"} if p.get("type") == "input_audio" else
                   {"type": "input_text", "text": p.get("text", "")} for p in content]
    return {**item, "content": content}


def _usage(meta: dict[str, Any]) -> dict[str, int]:
    prompt = sum(m.get("prompt_tokens", 0) for m in meta.values())
    made = sum(m.get("completion_tokens", 0) for m in meta.values())
    return {"input_tokens": prompt, "output_tokens": made, "total_tokens": prompt + made}


async def endpoint(ws: WebSocket) -> None:
    """The WebSocket route: the API key (``Authorization: Bearer``, as for HTTP), the model, then
    the session until the client leaves."""
    state = ws.app.state
    key = getattr(state, "api_key", None)
    header = ws.headers.get("authorization", "")
    if key and not hmac.compare_digest(header.partition(" ")[2].strip().encode(), key.encode()):
        await ws.close(code=1008, reason="invalid or missing API key")
        return
    if state.pipeline is None:
        await ws.close(code=1013, reason="the server is still loading its models")
        return
    model = ws.query_params.get("model")
    await ws.accept()
    session = Realtime(ws)
    if model is not None and model != state.pipeline.plan.name:
        await session.error(f"the model {model!r} does not exist; this server serves {state.pipeline.plan.name!r}",
                            "model", "model_not_found")
        await ws.close(code=1008)
        return
    with contextlib.suppress(WebSocketDisconnect):
        await session.run()
