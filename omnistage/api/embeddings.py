"""``POST /v1/embeddings``: one vector per input, from a graph's ``embed`` stage.

``input`` is a string, a list of strings, a list of token ids or a list of those (each item one
vector, in order); a CLIP model also takes items ``{"image": <data URL or --media-dir path>}``
and ``{"text": ...}``, embedded in one space; ``encoding_format`` ``float`` (lists of numbers) or ``base64`` (little-endian
float32, as OpenAI's); ``dimensions`` shortens a Matryoshka model's vectors.
"""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from omnistage.api.convert import media_source
from omnistage.api.errors import ApiError
from omnistage.api.fields import EMBEDDINGS
from omnistage.api.request import abort_on_failure, check_model, log_admitted, read_json


async def create(request: Request) -> Response:
    body = await read_json(request)
    model = check_model(request, body)
    texts = body.get("input")
    if texts is None or texts == "" or texts == []:
        raise ApiError(400, "input must be a non-empty string, list of strings or list of token ids", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"encoding_format must be float or base64, got {fmt!r}", "encoding_format")
    params = EMBEDDINGS.params(body)
    if isinstance(texts, list):
        texts = [_item(item, i, request.app.state.media_dir) for i, item in enumerate(texts)]
    pipe = request.app.state.pipeline
    handle = pipe.submit(input=texts, modalities=["embeddings"], loop=asyncio.get_running_loop(), **params)
    log_admitted(request, [handle])
    (result,) = await abort_on_failure(request, [handle])
    request.app.state.metrics.observe(handle, result.meta)
    vectors = result.outputs["embeddings"].float().numpy()
    data = [{"object": "embedding", "index": i, "embedding": _encoded(v, fmt)} for i, v in enumerate(vectors)]
    tokens = sum(m.get("prompt_tokens", 0) for m in result.meta.values())
    return JSONResponse({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _item(item: Any, i: int, media_dir: str | None) -> Any:
    """An ``{"image": url}`` item with its image as the stages take it; any other item as is."""
    if not isinstance(item, dict) or "image" not in item:
        return item
    url = item["image"]
    if not isinstance(url, str) or not url:
        raise ApiError(400, "an image item is a data URL (or a path under --media-dir)", f"input[{i}].image")
    return {**item, "image": media_source(url, "image", f"input[{i}].image", media_dir)}


def _encoded(vector: np.ndarray, fmt: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
