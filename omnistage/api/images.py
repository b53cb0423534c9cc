"""``POST /v1/images/generations`` and ``POST /v1/images/edits`` in the shape of OpenAI's images API.

Extensions beyond OpenAI's fields: ``negative_prompt``, ``num_inference_steps``,
``guidance_scale``, ``seed`` (image i of ``n`` uses ``seed + i``), ``scheduler`` and, for edits,
``strength`` (how much of the input image is noised away; default 0.8, or 1.0 with a mask); any
other field the diffusion stage does not read is refused (see ``fields``). An edit is image to
image: the uploaded picture, noised ``strength`` of the way, denoised toward the prompt. With a
``mask`` (the image's size) it is inpainting: only the mask's fully transparent pixels (or, for a
mask without transparency, its white ones) are repainted, the rest of the picture is kept.
"""
from __future__ import annotations

import asyncio
import base64
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from omnistage.api.errors import ApiError
from starlette.datastructures import UploadFile

from omnistage.api.fields import IMAGE_EDITS, IMAGES, Fields
from omnistage.api.request import (FormBody, abort_on_failure, check_model, choice_params, log_admitted, number,
                                   read_body, read_json)

MAX_IMAGES = 10
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def parse_size(value: Any, param: str = "size") -> dict[str, int]:
    """"WIDTHxHEIGHT" -> {"width", "height"}; "auto" or absent -> the model's default."""
    if value is None or value == "auto":
        return {}
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ApiError(400, f"{param} must look like \"512x512\" (width x height), got {value!r}", param)
    return {"width": int(match.group(1)), "height": int(match.group(2))}


def generation_params(body: dict[str, Any], fields: Fields = IMAGES) -> dict[str, Any]:
    """The prompt checked; the request's parameters: the extensions (negative_prompt,
    num_inference_steps, guidance_scale, seed, scheduler, ...) as the diffusion stage takes them,
    and ``size`` as width and height."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "prompt must be a non-empty string", "prompt")
    params = fields.params(body)
    params.update(parse_size(body.get("size")))
    return params


def _count(body: dict[str, Any]) -> int:
    n = number(body, "n") if isinstance(body, FormBody) else body.get("n", 1)
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise ApiError(400, f"n must be an integer between 1 and {MAX_IMAGES}", "n")
    return n


async def generations(request: Request) -> Response:
    body = await read_json(request)
    check_model(request, body, required=False)
    return await _generate(request, body, generation_params(body), {})


async def edits(request: Request) -> Response:
    """The openai client's ``images.edit``: a multipart form with the image file and the prompt."""
    body = await read_body(request)
    check_model(request, body, required=False)
    fields = body.multi if isinstance(body, FormBody) else list(body.items())
    inputs = {"image": await _upload(fields, ("image", "image[]"), "image")}
    if body.get("mask") is not None:
        inputs["mask"] = await _upload(fields, ("mask",), "mask")
    return await _generate(request, body, generation_params(body, IMAGE_EDITS), inputs)


async def _upload(fields: list[tuple[str, Any]], names: tuple[str, ...], param: str) -> bytes:
    """The one file uploaded under ``names``; a 400 naming ``param`` for none, several or a text value."""
    uploads = [v for k, v in fields if k in names]
    if len(uploads) != 1 or not isinstance(uploads[0], UploadFile):
        raise ApiError(400, f"{param} must be exactly one uploaded file (got {len(uploads)})", param)
    return await uploads[0].read()


async def _generate(request: Request, body: dict[str, Any], params: dict[str, Any], inputs: dict[str, Any]) -> Response:
    if body.get("response_format") not in (None, "b64_json"):
        raise ApiError(400, "response_format must be b64_json (this server does not host image URLs)",
                       "response_format")
    fmt = body.get("output_format") or "png"
    if fmt not in ("png", "jpeg", "webp"):
        raise ApiError(400, f"output_format must be png, jpeg or webp, got {fmt!r}", "output_format")
    pipe, loop = request.app.state.pipeline, asyncio.get_running_loop()
    handles = []
    for i in range(_count(body)):
        seeded = choice_params(params, i)
        handles.append(pipe.submit(prompt=body["prompt"], modalities=["image"], loop=loop, output_format=fmt,
                                   **inputs, **seeded))
    log_admitted(request, handles)
    results = await abort_on_failure(request, handles)
    for handle, result in zip(handles, results):
        request.app.state.metrics.observe(handle, result.meta)
    images = [r.outputs["image"] for r in results]
    return JSONResponse({
        "created": int(time.time()), "output_format": fmt, "size": f"{images[0]['width']}x{images[0]['height']}",
        "data": [{"b64_json": base64.b64encode(im["data"]).decode(), "revised_prompt": None} for im in images],
    })
