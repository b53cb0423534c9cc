"""Reading a request: the JSON body (with a size limit) and the model it names."""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.formparsers import MultiPartException
from starlette.requests import Request

from omnistage.api.errors import ApiError, ClientGone
from omnistage.errors import OmnistageError
from omnistage.stages.runtime.handle import RequestHandle

log = logging.getLogger("omnistage.api")


async def read_json(request: Request) -> dict[str, Any]:
    body = await read_limited(request)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


async def read_limited(request: Request) -> bytes:
    """The whole body, refused with 413 as soon as it passes the server's limit (chunked bodies too)."""
    limit = request.app.state.max_body
    if int(request.headers.get("content-length") or 0) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class FormBody(dict):  # type: ignore[type-arg]
    """A form's fields (multipart or urlencoded): every value a string or an ``UploadFile``;
    a repeated field keeps its last value here, and every value in ``multi``."""

    def __init__(self, multi: list[tuple[str, Any]]) -> None:
        super().__init__(multi)
        self.multi = multi


async def read_body(request: Request) -> dict[str, Any]:
    """JSON, or a form (the openai client uploads videos and audio as multipart forms) as a
    ``FormBody``: fields as strings, files as ``UploadFile``."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await read_json(request)
    limit = request.app.state.max_body
    if int(request.headers.get("content-length") or 0) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    try:
        form = await request.form(max_part_size=limit)
    except MultiPartException as exc:
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    return FormBody(list(form.multi_items()))


def number(body: dict[str, Any], key: str, kind: type = int) -> Any:
    """A numeric field that may arrive as a form string; absent stays None."""
    value = body.get(key)
    if not isinstance(value, str):
        return value
    try:
        return kind(value)
    except ValueError:
        raise ApiError(400, f"{key} must be a number, got {value!r}", key) from None


def choice_params(params: dict[str, Any], i: int) -> dict[str, Any]:
    """The parameters of choice ``i`` of ``n``: an integer seed becomes ``seed + i`` (anything else
    is left for the stages' check to refuse)."""
    seed = params.get("seed")
    if i == 0 or not isinstance(seed, int) or isinstance(seed, bool):
        return params
    return dict(params, seed=seed + i)


def check_model(request: Request, body: dict[str, Any], required: bool = True) -> str:
    name = request.app.state.pipeline.plan.name
    model = body.get("model")
    if model is None:
        if not required:
            return name
        raise ApiError(400, "model is required", "model")
    if model != name:
        raise ApiError(404, f"the model {model!r} does not exist; this server serves {name!r}", "model",
                       "model_not_found")
    return name


def log_admitted(request: Request, handles: list[RequestHandle]) -> None:
    """Link the HTTP request id (``x-request-id``) to the ids the stages log for its requests."""
    rid = request.scope.get("state", {}).get("request_id", "-")
    log.info("%s admitted as %s", rid, ", ".join(h.rid for h in handles))


async def abort_on_failure(request: Request, handles: list[RequestHandle]) -> list[Any]:
    """Every handle's result; if one fails or the client goes away (ClientGone), stop them all in
    every stage."""
    results = asyncio.ensure_future(asyncio.gather(*(h.aresult() for h in handles)))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not results.done():
            raise ClientGone()
        return results.result()
    except (OmnistageError, ApiError, asyncio.CancelledError):
        for h in handles:
            request.app.state.pipeline.orchestrator.abort(h.rid)
        raise
    finally:
        gone.cancel()
        results.cancel()


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
