"""Sending one request per endpoint and timing it as a client sees it: time to first token (or
audio), each gap between streamed tokens, end to end, tokens and seconds of audio received."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from omnistage.bench.datasets import Sample

PCM_RATE = 24000  # OpenAI's pcm / pcm16: 24 kHz, 16-bit mono


@dataclass
class Outcome:
    ok: bool = False
    error: str = ""
    ttft: float | None = None  # seconds to the first token
    itl: list[float] = field(default_factory=list)  # seconds between streamed tokens
    e2e: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttfp: float | None = None  # seconds to the first audio
    audio_seconds: float = 0.0

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def rtf(self) -> float | None:
        return self.e2e / self.audio_seconds if self.audio_seconds else None


@dataclass(frozen=True)
class Target:
    base_url: str  # http://host:port (no /v1)
    model: str
    headers: dict[str, str]


Send = Callable[[httpx.AsyncClient, Target, Sample], Awaitable[Outcome]]


async def _sse(response: httpx.Response) -> Any:
    async for line in response.aiter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


async def chat(client: httpx.AsyncClient, target: Target, sample: Sample, spoken: bool = False) -> Outcome:
    content: Any = sample.prompt
    if sample.images:
        content = [*({"type": "image_url", "image_url": {"url": u}} for u in sample.images),
                   {"type": "text", "text": sample.prompt}]
    body: dict[str, Any] = {"model": target.model, "messages": [{"role": "user", "content": content}],
                            "max_tokens": sample.output_len, "stream": True,
                            "stream_options": {"include_usage": True}}
    if spoken:
        body.update(modalities=["text", "audio"], audio={"voice": "alloy", "format": "pcm16"})
    out, start = Outcome(), time.perf_counter()
    last = None
    async with client.stream("POST", f"{target.base_url}/v1/chat/completions", json=body,
                             headers=target.headers) as response:
        if response.status_code != 200:
            return _failed(out, response.status_code, (await response.aread()).decode(errors="replace"), start)
        async for event in _sse(response):
            now = time.perf_counter()
            if "error" in event:
                return _failed(out, 500, json.dumps(event["error"]), start)
            if event.get("usage"):
                out.prompt_tokens = event["usage"]["prompt_tokens"]
                out.output_tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", ()):
                delta = choice.get("delta", {})
                audio = delta.get("audio") or {}
                if audio.get("data"):
                    out.ttfp = out.ttfp if out.ttfp is not None else now - start
                    out.audio_seconds += len(base64.b64decode(audio["data"])) / 2 / PCM_RATE
                if delta.get("content") or audio.get("transcript"):
                    if last is None:
                        out.ttft = now - start
                    else:
                        out.itl.append(now - last)
                    last = now
    out.e2e, out.ok = time.perf_counter() - start, True
    return out


async def spoken_chat(client: httpx.AsyncClient, target: Target, sample: Sample) -> Outcome:
    return await chat(client, target, sample, spoken=True)


async def images(client: httpx.AsyncClient, target: Target, sample: Sample) -> Outcome:
    out, start = Outcome(), time.perf_counter()
    r = await client.post(f"{target.base_url}/v1/images/generations", headers=target.headers,
                          json={"model": target.model, "prompt": sample.prompt})
    if r.status_code != 200:
        return _failed(out, r.status_code, r.text, start)
    out.e2e, out.ok = time.perf_counter() - start, True
    return out


async def speech(client: httpx.AsyncClient, target: Target, sample: Sample) -> Outcome:
    out, start = Outcome(), time.perf_counter()
    body = {"model": target.model, "input": sample.prompt, "voice": "alloy", "response_format": "pcm"}
    nbytes = 0
    async with client.stream("POST", f"{target.base_url}/v1/audio/speech", json=body,
                             headers=target.headers) as response:
        if response.status_code != 200:
            return _failed(out, response.status_code, (await response.aread()).decode(errors="replace"), start)
        async for data in response.aiter_bytes():
            if data and out.ttfp is None:
                out.ttfp = time.perf_counter() - start
            nbytes += len(data)
    out.audio_seconds = nbytes / 2 / PCM_RATE
    out.e2e, out.ok = time.perf_counter() - start, True
    return out


async def videos(client: httpx.AsyncClient, target: Target, sample: Sample) -> Outcome:
    out, start = Outcome(), time.perf_counter()
    r = await client.post(f"{target.base_url}/v1/videos", headers=target.headers,
                          json={"model": target.model, "prompt": sample.prompt})
    if r.status_code != 200:
        return _failed(out, r.status_code, r.text, start)
    job = r.json()
    while job["status"] not in ("completed", "failed"):
        await asyncio.sleep(0.02)
        job = (await client.get(f"{target.base_url}/v1/videos/{job['id']}", headers=target.headers)).json()
    if job["status"] == "failed":
        return _failed(out, 500, json.dumps(job.get("error")), start)
    out.e2e, out.ok = time.perf_counter() - start, True
    return out


def _failed(out: Outcome, status: int, text: str, start: float) -> Outcome:
    out.error, out.e2e = f"{status}: {text[:300]}", time.perf_counter() - start
    return out


ENDPOINTS: dict[str, Send] = {"chat": chat, "images": images, "speech": speech, "videos": videos,
                              "spoken-chat": spoken_chat}
