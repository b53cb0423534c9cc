"""Usage where a response has no JSON body to carry it: ``x-usage-*`` response headers.

A binary or plain-text body (speech audio, a transcript as text/srt/vtt, a video's content) says
what it cost in headers, one per usage field: ``x-usage-input-tokens``, ``x-usage-output-tokens``,
``x-usage-total-tokens``, and ``x-usage-audio-seconds`` / ``x-usage-video-seconds`` where media
was made. Headers go before the body, so a body streamed as it is made (speech by default) cannot
carry them; its usage comes in the stream's last server-sent event (``stream_format: "sse"``), or
in headers when the request asks for the whole body at once (``stream: false``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIX = "x-usage-"


def token_usage(meta: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Tokens the stages reported (each stage's ``prompt_tokens`` and ``completion_tokens``; 0 where
    none did)."""
    prompt = sum(m.get("prompt_tokens", 0) for m in meta.values())
    made = sum(m.get("completion_tokens", 0) for m in meta.values())
    return {"input_tokens": prompt, "output_tokens": made, "total_tokens": prompt + made}


def usage_headers(usage: Mapping[str, Any]) -> dict[str, str]:
    """``{"input_tokens": 3, "type": "tokens"}`` -> ``{"x-usage-input-tokens": "3"}`` (the JSON
    usage's ``type`` tag is not a quantity and is left out)."""
    return {PREFIX + name.replace("_", "-"): str(value) for name, value in usage.items() if name != "type"}
