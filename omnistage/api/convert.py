"""OpenAI request bodies -> pipeline inputs and parameters (and their validation)."""
from __future__ import annotations

import base64
import json
from typing import Any

from omnistage.api.errors import ApiError
from omnistage.api.fields import CHAT, COMPLETIONS
from omnistage.encoders.media import MediaLimits, read_source

def chat_inputs(body: dict[str, Any], media_dir: str | None = None) -> dict[str, Any]:
    """Messages in the chat template's shape, with media pulled out into images/audio/video.

    Media URLs: data URLs pass through; ``file://`` URLs and paths are read here, only under
    ``media_dir`` (``omnistage serve --media-dir``); remote URLs are refused."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    out, images, audio, video = [], [], [], None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise ApiError(400, f"messages[{i}] needs a role of system, user, assistant or tool", f"messages[{i}].role")
        content = message.get("content")
        role = "system" if message["role"] == "developer" else message["role"]
        extra = _tool_fields(message, i)
        if isinstance(content, str) or content is None:
            out.append({"role": role, "content": content or "", **extra})
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", f"messages[{i}].content")
        parts = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                images.append(media_source(_url(part.get("image_url"), where), "image", where, media_dir))
                parts.append({"type": "image"})
            elif kind == "video_url":
                if video is not None:
                    raise ApiError(400, "at most one video per request", where)
                video = media_source(_url(part.get("video_url"), where), "video", where, media_dir)
                parts.append({"type": "video"})
            elif kind == "input_audio":
                audio.append(_audio(part.get("input_audio"), where))
                parts.append({"type": "audio"})
            else:
                raise ApiError(400, f"unsupported content part type {kind!r}", f"{where}.type")
        if role in ("tool", "assistant") and all(p["type"] == "text" for p in parts):
            parts = "".join(p["text"] for p in parts)  # (templates print a tool result or a reply as a string)
        out.append({"role": role, "content": parts, **extra})
    inputs: dict[str, Any] = {"messages": out}
    if images:
        inputs["images"] = images
    if audio:
        inputs["audio"] = audio
    if video is not None:
        inputs["video"] = video
    return inputs


_ROLES = ("system", "user", "assistant", "developer", "tool")


def _tool_fields(message: dict[str, Any], i: int) -> dict[str, Any]:
    """A tool result's ``tool_call_id``; an assistant turn's ``tool_calls``, their arguments as
    objects (chat templates render them with ``tojson``)."""
    where = f"messages[{i}]"
    if message["role"] == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise ApiError(400, f"{where} is a tool result and needs its tool_call_id", f"{where}.tool_call_id")
        return {"tool_call_id": call_id}
    calls = message.get("tool_calls")
    if calls is None or message["role"] != "assistant":
        return {}
    if not isinstance(calls, list):
        raise ApiError(400, f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
            raise ApiError(400, f"{where}.tool_calls[{j}] needs a function with a name and arguments (a JSON string)",
                           f"{where}.tool_calls[{j}]")
        try:
            arguments = json.loads(fn["arguments"])
        except ValueError:
            raise ApiError(400, f"{where}.tool_calls[{j}].function.arguments is not valid JSON",
                           f"{where}.tool_calls[{j}].function.arguments") from None
        out.append({"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": arguments}})
    return {"tool_calls": out}


def _url(value: Any, where: str) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ApiError(400, "a url is required", where)
    return url


def media_source(url: str, kind: str, where: str, media_dir: str | None) -> str | bytes:
    """A request's media reference as the stages take it: a data URL as is, a local path (under
    ``--media-dir`` only) as its bytes; a remote URL is refused."""
    if url.startswith("data:"):
        return url
    if url.startswith(("http://", "https://")):
        raise ApiError(400, f"remote {kind} URLs are not fetched; send the {kind} inline as a data URL", where)
    if media_dir is None:
        raise ApiError(400, f"local {kind} paths are off; start the server with --media-dir to allow a directory",
                       where)
    path = url[len("file://"):] if url.startswith("file://") else url
    return read_source(path, kind, MediaLimits(allowed_dir=media_dir), where)[0]


def _audio(value: Any, where: str) -> bytes:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str):
        raise ApiError(400, "input_audio needs base64 data and a format", where)
    try:
        return base64.b64decode(value["data"], validate=True)
    except ValueError:
        raise ApiError(400, "input_audio data is not valid base64", f"{where}.input_audio.data") from None


def sampling_params(body: dict[str, Any], chat: bool = True) -> dict[str, Any]:
    """The request's parameters: every field that is not the endpoint's own (temperature, seed,
    stop, the extensions top_k, min_p, repetition_penalty, ignore_eos, use_audio_in_video, ...),
    checked by the graph's stages at submit, plus ``max_tokens`` and ``logprobs`` in the
    engine's terms."""
    params = (CHAT if chat else COMPLETIONS).params(body)
    limit = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    if limit is not None:
        params["max_tokens"] = limit
    if not chat:  # the legacy API's logprobs is the number of alternatives
        if body.get("logprobs") is not None:
            params["logprobs"] = body["logprobs"]
        return params
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, f"logprobs must be true or false, got {wanted!r}", "logprobs")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20):
        raise ApiError(400, f"top_logprobs must be an integer between 0 and 20, got {top!r}", "top_logprobs")
    if top is not None and not wanted:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if wanted:
        params["logprobs"] = top or 0
    return params


def token_ids(body: dict[str, Any]) -> bool:
    """``return_token_ids``: whether each choice also carries its generated token ids."""
    wanted = body.get("return_token_ids")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError(400, f"return_token_ids must be true or false, got {wanted!r}", "return_token_ids")
    return bool(wanted)


def stream_settings(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage), checked."""
    stream, options = body.get("stream"), body.get("stream_options")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object such as {\"include_usage\": true}", "stream_options")
    usage = (options or {}).get("include_usage")
    if usage is not None and not isinstance(usage, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", "stream_options.include_usage")
    return bool(stream), bool(usage)


def choices_count(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
        raise ApiError(400, "n must be an integer between 1 and 16", "n")
    return n
